"""The field's edge attribution methods: EAP, EAP-IG-inputs and EAP-IG-activations (as EAP-IG computes them).

All three score an edge by the writer's delta times an (averaged) gradient at the reader's private input,
``Î(u -> v; t) = (w_u(noise)(t) − w_u(clean)(t)) · g_v(t)``, signed as the change of the metric (EAP-IG's
scores are the same numbers for its loss; the MIB convention is their negative, see
:func:`atpstar.circuits.mib_scores`). They differ in where the gradient is taken:

- **EAP**: on the clean run — plain edge AtP (:func:`atpstar.edges.atp` without the QK fix or GradDrop).
- **EAP-IG-inputs**: the mean over ``k = 0 .. S−1`` of the gradient on the clean prompt whose input
  embedding (the residual stream entering block 0) is ``noise + (k/S)(clean − noise)``: a left Riemann
  sum of the integrated gradient from the noise to the clean input (EAP-IG's ``get_scores_eap_ig``).
- **EAP-IG-activations**: for each group of writers — the input embedding, each layer's attention
  write, each layer's MLP write — and ``k = 1 .. S``, the group's write is set (as a constant) to
  ``(k/S)·clean + (1 − k/S)·noise`` in a clean run; the gradient at every reader is averaged over all
  groups and steps (EAP-IG's ``get_scores_ig_activations``). Readers below a replaced group get no
  gradient through it in that step, as there. On Gemma 3 the attention group is the write after the
  post-attention norm (EAP-IG interpolates the per-head results before that norm).

``ig_steps`` is S (the MIB benchmark uses 5). Effects are per position (mean over the pairs present);
EAP-IG's position-free scores are their sums over positions.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
from torch import Tensor

from ..cost import Cost
from ..pairs import PromptPairs
from .atp import _PairEstimate, prepare
from .graph import ATTN, HEAD, MLP, EdgeGraph
from .scores import EdgeScores
from .sites import block_module, first
from .writes import write_deltas

__all__ = ["eap", "eap_ig_activations", "eap_ig_inputs"]


def eap(model, pairs: PromptPairs, metric=None, graph: EdgeGraph | None = None, per_pair: bool = False) -> EdgeScores:
    """EAP: edge AtP with the gradient of the clean run (no QK fix, no GradDrop)."""
    return _integrated(model, pairs, metric, graph, per_pair, "eap", [(None, 0.0)])


def eap_ig_inputs(model, pairs: PromptPairs, ig_steps: int = 5, metric=None, graph: EdgeGraph | None = None,
                  per_pair: bool = False) -> EdgeScores:
    """EAP-IG-inputs: gradients along the straight path of the input embedding from noise to clean."""
    steps = check_ig_steps(ig_steps)
    return _integrated(model, pairs, metric, graph, per_pair, f"eap-ig-inputs ({steps} steps)",
                       [(("embed", None), 1 - k / steps) for k in range(steps)])


def eap_ig_activations(model, pairs: PromptPairs, ig_steps: int = 5, metric=None, graph: EdgeGraph | None = None,
                       per_pair: bool = False) -> EdgeScores:
    """EAP-IG-activations: each writer group's write interpolated from noise to clean in turn."""
    steps = check_ig_steps(ig_steps)
    groups = [("embed", None)] + [(kind, layer) for layer in range(model.n_layers) for kind in ("attn", "mlp")]
    plan = [(g, 1 - k / steps) for g in groups for k in range(1, steps + 1)]
    return _integrated(model, pairs, metric, graph, per_pair, f"eap-ig-activations ({steps} steps)", plan)


def check_ig_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"ig_steps must be a positive integer (the MIB benchmark uses 5), got {steps!r}")
    return steps


def _integrated(model, pairs, metric, graph, per_pair: bool, name: str, steps: list) -> EdgeScores:
    """Mean over ``steps``, a plan of (group, share) runs, of the edge estimates; ``group`` None is the clean run,
    else that group's write moves ``share`` of the way from clean to noise (a constant)."""
    metric, graph, shape, dtype = prepare(model, pairs, metric, graph)
    total, count = torch.zeros(shape, dtype=dtype), torch.zeros(pairs.max_len, dtype=dtype)
    full = torch.full((len(pairs), *shape), torch.nan) if per_pair else None
    start, runs = time.perf_counter(), len(steps)
    for chunk in [c for g in pairs.groups() for c in g.split(1)]:
        delta = write_deltas(model, graph, chunk.clean, chunk.noise)[0][0]
        effect = 0
        for group, share in steps:
            with _moved(model, graph, group, share, delta):
                effect = effect + _PairEstimate(model, graph, chunk, metric, False, False, delta).run()[0]
        effect = effect / runs
        window = slice(chunk.offset, chunk.offset + effect.shape[-1])
        total[..., window] += effect.to("cpu", dtype)
        count[window] += 1
        if full is not None:
            full[chunk.index[0], ..., window] = effect.cpu().float()
    mean = (total / count.where(count > 0, torch.nan)).masked_fill_(~graph.valid[..., None], torch.nan)
    if full is not None:
        full.masked_fill_(~graph.valid[None, ..., None], torch.nan)
    n = len(pairs)
    cost = Cost(forward=n * (2.0 + runs), backward=float(n * runs), pairs=n, seconds=time.perf_counter() - start)
    info = {"metric": metric.name, "runs_per_pair": runs, "cost": cost}
    return EdgeScores(name, graph, mean, mean.abs(), n, full, info)


@contextmanager
def _moved(model, graph: EdgeGraph, group, share: float, delta: Tensor):
    """During the block: the write of ``group`` (``("embed", None)``, ``("attn", ℓ)``, ``("mlp", ℓ)``) is its
    clean value plus ``share`` of its delta, as a constant; None: nothing changes."""
    handles = []
    if group is not None:
        kind, layer = group
        if kind == "embed":
            change = share * delta[0]
            handles.append(model.layers[0].register_forward_pre_hook(_shift_input(change), with_kwargs=True))
        else:
            kinds = (HEAD, ATTN) if kind == "attn" else (MLP,)
            rows = (torch.isin(graph.writer_kind, torch.tensor(kinds)) & (graph.writer_layer == layer)).nonzero().flatten()
            change = share * delta[rows.to(delta.device)].sum(0)
            sites = model.arch
            module = block_module(model, layer, sites.attn_write if kind == "attn" else sites.mlp_write)
            handles.append(module.register_forward_hook(_constant_output(change)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _shift_input(change: Tensor):
    def hook(module, args, kwargs):
        if args:
            return (args[0].detach() + change.to(args[0].dtype), *args[1:]), kwargs
        hidden = kwargs["hidden_states"]
        return args, {**kwargs, "hidden_states": hidden.detach() + change.to(hidden.dtype)}

    return hook


def _constant_output(change: Tensor):
    def hook(module, args, out):
        value = first(out).detach() + change.to(first(out).dtype)
        return (value, *out[1:]) if isinstance(out, tuple) else value

    return hook
