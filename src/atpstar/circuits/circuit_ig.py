"""Circuit IG: integrated gradients of the circuit's own metric over the edges' membership.

Faithfulness asks for ``m(C)``: the metric of the run in which every edge outside the circuit reads
its writer's noise write (:mod:`.mixture`). Give every edge a membership ``s ∈ [0, 1]`` instead of
in/out — edge u -> v reads ``s·w_u(this run) + (1 − s)·w_u(noise)`` — and ``m(s)`` runs from the
noise run (every ``s = 0``) to the clean run (every ``s = 1``) through the very runs the evaluator
scores. Circuit IG attributes that change to the edges with the integrated gradient along the
straight path ``s = α·1``:

    Î(u -> v; t) = − ∫₀¹ ∂m/∂s_{u->v,t}(α·1) dα ≈ − (1/S) Σ_k ∂m/∂s(α_k·1),  α_k = (k + ½)/S

(the midpoint rule over ``S = ig_steps`` points), signed like every atpstar edge effect: the change of
the metric when the edge is patched (its writer's noise write read instead). The effects add up to
``m(∅) − m(full)`` over all edges and positions (exactly in the limit of many steps; the midpoint
rule's error falls as 1/S²).

It differs from EAP-IG in the path, not the form: EAP-IG-inputs moves the input embedding and lets the
model carry the change; EAP-IG-activations moves one group of writers at a time; circuit IG moves every
edge at once, each reader reading the mixture the faithfulness evaluation will read. An edge whose
linear estimate at the clean run has the wrong sign (a saturated effect) gets the average slope along
the way instead.

Cost per pair: one noise run (its writes) and ``S`` forward and backward passes of the mixed run
(whose forward pass does more work than a plain one: every reader sums its incoming edges' writes).
"""

from __future__ import annotations

import time

import torch
from tqdm.auto import tqdm

from ..cost import Cost
from ..edges.atp import prepare
from ..edges.eap_ig import check_ig_steps
from ..edges.graph import EdgeGraph
from ..edges.scores import EdgeScores
from ..edges.writes import capture_writes
from ..pairs import PromptPairs
from ..substrate.capture import run
from ..substrate.patching import check_batch_size
from .mixture import GradMixedRun

__all__ = ["circuit_ig"]


def circuit_ig(model, pairs: PromptPairs, ig_steps: int = 20, metric=None, graph: EdgeGraph | None = None,
               per_pair: bool = False, batch_size: int = 1, progress: bool = False) -> EdgeScores:
    """Every edge's effect by circuit IG (module doc), per position; ``EdgeScores.effect`` is the mean over the
    pairs present, ``score`` its absolute value. ``ig_steps``: the points of the path (error ~1/S²);
    ``batch_size``: pairs per pass (on a CPU more gains no time; a pass holds a few hundred MB per pair of
    SmolLM2-135M's IOI prompts); ``progress``: a progress bar over the pairs."""
    steps = check_ig_steps(ig_steps)
    check_batch_size(batch_size)
    batch_size = batch_size or 1
    metric, graph, shape, dtype = prepare(model, pairs, metric, graph)
    total, count = torch.zeros(shape, dtype=torch.float64), torch.zeros(pairs.max_len, dtype=torch.float64)
    full = torch.full((len(pairs), *shape), torch.nan) if per_pair else None
    start = time.perf_counter()
    bar = tqdm(total=len(pairs), desc=f"circuit IG ({steps} steps)", unit="pair", disable=not progress, leave=False)
    for group in pairs.groups():
        n_group, n_tok = group.clean.shape
        with torch.no_grad():
            noise_w = capture_writes(model, graph, group.noise)[0]
        window = slice(group.offset, group.offset + n_tok)
        for lo in range(0, n_group, batch_size):
            rows = torch.arange(lo, min(lo + batch_size, n_group))
            effect = _integrate(model, graph, metric, group, rows, noise_w[rows], steps)
            total[..., window] += effect.sum(0)
            count[window] += len(rows)
            if full is not None:
                full[group.index[rows], ..., window] = effect.float()
            bar.update(len(rows))
    bar.close()
    mean = (total / count.where(count > 0, torch.nan)).to(dtype).masked_fill_(~graph.valid[..., None], torch.nan)
    if full is not None:
        full.masked_fill_(~graph.valid[None, ..., None], torch.nan)
    n = len(pairs)
    cost = Cost(forward=float(n * (1 + steps)), backward=float(n * steps), pairs=n, seconds=time.perf_counter() - start)
    info = {"metric": metric.name, "ig_steps": steps, "runs_per_pair": steps, "cost": cost}
    return EdgeScores(f"circuit-ig ({steps} steps)", graph, mean, mean.abs(), n, full, info)


def _integrate(model, graph, metric, group, rows, noise_w, steps: int) -> torch.Tensor:
    """(len(rows), W, R, T) float64: the mean gradient of the mixed run's metric with respect to each edge's share of
    its writer's noise write at each position, at the midpoints of the path from the clean run to the noise run."""
    total = torch.zeros(len(rows), *graph.shape, group.clean.shape[1], dtype=torch.float64)
    for k in range(steps):
        hooks = GradMixedRun(model, grad=True, graph=graph, noise=noise_w, share=1 - (k + 0.5) / steps)
        value = metric(run(model, group.clean[rows], hooks), group.pairs.select(rows))
        total += hooks.edge_gradients(value.sum())
    return total / steps
