"""Edge AtP, +QK fix, +GradDrop and AtP*: every edge's effect estimated at once.

``Î(u -> v; t) = (w_u(noise)(t) − w_u(clean)(t)) · ∂L/∂r_v(t)`` with ``r_v`` reader v's private input
(:mod:`.reader_grads`). Per reader layer, the estimates of all its edges are one einsum of the writer
deltas (W, T, d) with the reader gradients (R, T, d): never a Python object per edge.

- QK fix (``qk_fix=True``): an edge into a query (key) reader gets the reader's new query (key)
  computed exactly, through its norm, projection, rotary embedding and QK-norm, from
  ``r_v + Δw_u`` (the block is re-run on ``x + Δw_u`` for every writer u, up to its keys), then
  the exact softmax change of the node QK fix (:class:`~atpstar.methods.qkfix_linear.QKFix`): a key's
  effect is summed over every query position t ≥ s and every query head of its group.
- GradDrop (``graddrop=True``): score = mean over pairs of ``(1/(L−1)) Σ_ℓ |Î_ℓ|`` with
  ``Î_ℓ = Δw_u · ∂L^(−ℓ)/∂r_v``: a reader of layer m gets the ordinary estimate for the m dropped layers
  below it, 0 for its own layer and the GradDrop streams of the layers above. ``effect`` stays the
  ordinary (QK-fixed) estimate.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..cost import Cost
from ..metrics import resolve
from ..methods.atp import method_name
from ..methods.gradients import FULL
from ..methods.qkfix_linear import QKFix
from ..pairs import PromptPairs, check_pairs
from ..types import PROBS
from .graph import K, MLP_IN, Q, V, EdgeGraph
from .reader_grads import LOGITS_SITE, MLP_SITE, AttnReaders, clean_backward, queries_keys
from .scores import EdgeScores
from .writes import capture_writes


def prepare(model, pairs, metric, graph):
    """What every edge estimator checks and sets up first: (metric, graph, the (W, R, T) shape, the
    accumulation dtype), with the pairs checked against the model."""
    check_pairs(pairs)
    metric = resolve(metric, pairs)
    pairs.check_vocab(model.vocab_size)
    graph = EdgeGraph.resolve(model, graph)
    shape = (graph.n_writers, graph.n_readers, pairs.max_len)
    return metric, graph, shape, torch.promote_types(model.dtype, torch.float32)


def atp(model, pairs: PromptPairs, qk_fix: bool = True, graddrop: bool = True, metric=None,
        graph: EdgeGraph | None = None, per_pair: bool = False, progress: bool = False) -> EdgeScores:
    """Estimate every edge's effect (AtP* on edges, or AtP and its variants via the two flags).

    Args: as :func:`atpstar.atp`; ``graph`` (default ``EdgeGraph.of(model)``); ``per_pair``: keep the
    per-pair signed estimates (P, W, R, T). Pairs are processed one at a time.

    Returns: :class:`EdgeScores` with ``effect`` = signed mean estimate, ``score`` = mean |Î| (or the
    GradDrop score); NaN on edges that do not exist."""
    metric, graph, shape, dtype = prepare(model, pairs, metric, graph)
    total = {"effect": torch.zeros(shape, dtype=dtype), "score": torch.zeros(shape, dtype=dtype)}
    count = torch.zeros(pairs.max_len, dtype=dtype)
    full = torch.full((len(pairs), *shape), torch.nan) if per_pair else None
    start, forward = time.perf_counter(), 0.0
    chunks = [c for g in pairs.groups() for c in g.split(1)]
    for chunk in tqdm(chunks, desc="edge " + method_name(qk_fix, graddrop), disable=not progress, leave=False):
        pair = _PairEstimate(model, graph, chunk, metric, qk_fix, graddrop)
        effect, score = pair.run()
        window = slice(chunk.offset, chunk.offset + effect.shape[-1])
        total["effect"][..., window] += effect.to("cpu", dtype)
        total["score"][..., window] += score.to("cpu", dtype)
        count[window] += 1
        forward += pair.forward_passes
        if full is not None:
            full[chunk.index[0], ..., window] = effect.cpu().float()
    mean = {k: (v / count.where(count > 0, torch.nan)).masked_fill_(~graph.valid[..., None], torch.nan)
            for k, v in total.items()}
    if full is not None:
        full.masked_fill_(~graph.valid[None, ..., None], torch.nan)
    n = len(pairs)
    backward = n * (1 + (model.n_layers - 1) / 2 if graddrop else 1)
    cost = Cost(forward=forward, backward=backward, pairs=n, seconds=time.perf_counter() - start)
    info = {"metric": metric.name, "qk_fix": qk_fix, "graddrop": graddrop, "forward_passes": forward,
            "backward_passes": backward, "cost": cost}
    return EdgeScores("edge " + method_name(qk_fix, graddrop), graph, mean["effect"], mean["score"], n, full, info)


class _PairEstimate:
    """All edge estimates of one prompt pair: (W, R, T) signed ordinary estimates and score terms."""

    def __init__(self, model, graph: EdgeGraph, chunk, metric, qk_fix: bool, graddrop: bool, delta: Tensor | None = None):
        """``delta``: the (W, T, d) writer deltas when already captured (else two forward passes capture them)."""
        self.model, self.graph, self.chunk, self.metric = model, graph, chunk, metric
        self.qk_fix, self.graddrop = qk_fix, graddrop
        if delta is None:
            clean_w, _, _ = capture_writes(model, graph, chunk.clean)
            noise_w, _, _ = capture_writes(model, graph, chunk.noise)
            delta = noise_w.sub_(clean_w)[0]
        self.delta = delta  # (W, T, d)
        n_tok = self.delta.shape[1]
        dtype = torch.promote_types(model.dtype, torch.float32)
        self.effect = torch.zeros(graph.n_writers, graph.n_readers, n_tok, dtype=dtype, device=self.delta.device)
        self.score = torch.zeros_like(self.effect)
        self.clean: dict = {}
        self.grads: dict = {}  # {(layer, site, stream): grad}
        self.norm = max(model.n_layers - 1, 1)
        self.forward_passes = 3.0
        self.rerun_share = _query_key_share(model)

    def run(self) -> tuple[Tensor, Tensor]:
        keep = lambda layer, site, x: self.clean.__setitem__((layer, site), x)  # noqa: E731
        self.backward = clean_backward(self.model, self.chunk.clean, self.chunk.pairs, self.metric, self.qk_fix,
                                       self.graddrop, keep)
        self.backward.run(self._grad, self._block_done)
        self._layer(self.model.n_layers)  # the logits reader
        self.backward = None  # its hooks' closures refer back here through autograd, which gc cannot see: let go
        return self.effect, self.score

    def _grad(self, layer: int, site: str, stream: int, grad: Tensor) -> None:
        key = (layer, site, stream)
        self.grads[key] = grad if key not in self.grads else self.grads[key] + grad

    def _block_done(self, layer: int) -> None:
        self._layer(layer)

    def _layer(self, layer: int) -> None:
        """Estimates and GradDrop terms of every edge into the readers of ``layer`` (L: ``logits``)."""
        graph, model = self.graph, self.model
        streams = sorted({s for (l, _, s) in self.grads if l == layer})
        if layer == model.n_layers:
            readers, attn = graph.reader_index(["logits"]), None
        else:
            readers = (graph.reader_layer == layer).nonzero().flatten()
            attn = AttnReaders(model, graph, layer, kinds=(V,) if self.qk_fix else (Q, K, V))
        n_w = int((graph.writer_layer <= layer).sum())
        fix = self._qk_fix(layer, n_w) if self.qk_fix and attn is not None else None
        for stream in streams or [FULL]:
            est = self._estimate(layer, stream, readers, attn, n_w, fix)
            if stream == FULL:
                self.effect[:n_w, readers] = est
                plain = layer if self.graddrop else self.norm  # dropped layers below the reader: plain estimate
                self.score[:n_w, readers] += est.abs() * (plain / self.norm)
            else:
                self.score[:n_w, readers] += est.abs() / self.norm
        for key in [k for k in self.grads if k[0] == layer]:
            del self.grads[key]
        for key in [k for k in self.clean if k[0] == layer]:
            del self.clean[key]

    def _estimate(self, layer: int, stream: int, readers: Tensor, attn, n_w: int, fix) -> Tensor:
        """(n_w, len(readers), T) estimates of one gradient stream."""
        delta = self.delta[:n_w]
        if attn is None:
            grad = self.grads.get((layer, LOGITS_SITE, stream))
            return _dot(delta, grad)
        x = self.backward.hooks.norm_inputs[layer]
        proj = {p: self.grads.get((layer, f"reader_proj:{p}", stream)) for p in attn.weights}
        grads = torch.cat([attn.input_grads(proj, x), _as_reader(self.grads.get((layer, MLP_SITE, stream)), x)])
        kinds = self.graph.reader_kind[readers]
        linear = torch.isin(readers, attn.index) | (kinds == MLP_IN)  # the attention readers asked, and the MLP
        est = delta.new_zeros(n_w, len(readers), delta.shape[1], dtype=torch.promote_types(delta.dtype, torch.float32))
        est[:, linear] = _dot(delta, grads)  # readers of the layer in graph order: q, k, v heads, then the MLP
        if fix is not None:
            g = self.grads.get((layer, PROBS, stream))
            g = torch.zeros_like(fix.a if fix.a is not None else fix.d_query) if g is None else g
            g = g.expand(n_w, *g.shape[1:])
            n_before = int((self.graph.writer_layer < layer).sum())
            est[:n_before, kinds == Q] = fix.query(g[:n_before]).to(est.dtype)
            est[:n_before, kinds == K] = fix.key(g[:n_before]).to(est.dtype)
        return est

    def _qk_fix(self, layer: int, n_w: int):
        """The QK fix of ``layer`` for every writer below it (rows: writers), built once per layer."""
        n_before = int((self.graph.writer_layer < layer).sum())
        x = self.backward.hooks.norm_inputs[layer]
        q_new, k_new = queries_keys(self.backward, layer, x + self.delta[:n_before])
        self.forward_passes += n_before * self.rerun_share / self.model.n_layers  # n_before re-runs of q, k only
        mask, scale, softcap = self.backward.hooks.meta[layer]
        q, k = self.clean[(layer, "q")], self.clean[(layer, "k")]
        if mask is not None:
            mask = mask[..., : k.shape[-2]]
        expand = lambda t: t.expand(n_before, *t.shape[1:])  # noqa: E731
        # clean probabilities recomputed from q, k in the compute dtype (the model's own are float32-rounded)
        return QKFix(expand(q), expand(k), scale, q_noise=q_new, k_noise=k_new, mask=mask, softcap=softcap)


def _as_reader(grad: Tensor | None, x: Tensor) -> Tensor:
    """(1, T, d) gradient of a private reader input, zeros if none arrived."""
    return x.new_zeros(x.shape) if grad is None else grad.to(x.dtype)


def _dot(delta: Tensor, grads: Tensor | None) -> Tensor:
    """(W, R, T) = Σ_d delta (W, T, d) · grads (R, T, d), in float32 at least."""
    if grads is None:
        return delta.new_zeros(delta.shape[0], 1, delta.shape[1])
    dtype = torch.promote_types(delta.dtype, torch.float32)
    return torch.einsum("wtd,rtd->wrt", delta.to(dtype), grads.to(dtype))


def _query_key_share(model) -> float:
    """The share of one block's weights that a query/key re-run multiplies by (its q and k projections),
    so that the QK fix's per-writer re-runs are counted as the fraction of a forward pass they compute."""
    qk = model.d_model * (model.n_heads + model.n_kv_heads) * model.d_head
    block = sum(p.numel() for p in model.layers[0].parameters() if p.dim() > 1)
    return min(1.0, qk / block)
