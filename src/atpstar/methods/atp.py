"""AtP and AtP*: first-order estimates of every node's patching effect at once.

- AtP: ``Î(n) = (n(noise) − n(clean)) · ∂L/∂n`` from one noise forward, one clean forward and one
  backward. Score: ``mean over pairs |Î|``; effect: signed mean of ``Î``.
- QK fix (``qk_fix=True``): query and key nodes get the exact change of the attention
  probabilities, linearised only after the softmax (:mod:`atpstar.methods.qkfix`).
- GradDrop (``graddrop=True``): score ``mean over pairs of (1/(L−1)) Σ_ℓ |Î_ℓ(n)|`` where Î_ℓ uses
  the gradient with layer ℓ's residual write frozen (:mod:`atpstar.methods.gradients`). The signed
  ``effect`` stays the ordinary (QK-fixed) estimate.
- AtP* = both. ``qk_fix=False, graddrop=False`` is plain AtP.

Memory stays flat: the noise run's node values become ``noise − clean`` in place during the clean
forward, gradients are consumed by tensor hooks as the block-by-block backward produces them
(:class:`~atpstar.methods.gradients.Backward`), each layer's estimates and GradDrop terms are
summed over pairs into float32 results (:class:`~atpstar.scores.LayerAccumulator`) and a block's
inputs are freed once every stream has crossed it. Products are accumulated in float32 at least,
also for half-precision models.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from ..substrate.capture import Intervention, run
from ..cost import Cost
from ..metrics import resolve
from ..pairs import PromptPairs, check_pairs
from .qkfix_linear import QKFix
from ..scores import LayerAccumulator, Scores
from ..types import PROBS, RESID, NodeKind
from .gradients import FULL, Backward


def atp(model, pairs: PromptPairs, kinds=None, qk_fix: bool = True, graddrop: bool = True, metric=None,
        batch_size: int = 8, per_pair: bool = False, progress: bool = True, recompute: bool | None = None) -> Scores:
    """Estimate every node's effect (AtP*, or AtP and its variants via the two flags).

    Args:
        model, pairs, kinds, metric: as for :func:`atpstar.acp`.
        qk_fix: exact softmax change for query/key nodes (fixes attention saturation).
        graddrop: GradDrop ranking score (fixes cancellation between direct and indirect effects).
        batch_size: prompt pairs per forward/backward pass.
        per_pair: keep per-pair signed estimates in ``Scores.per_pair``.
        recompute: keep only the noise run's residual stream and recompute each block's node values
            (noise and clean) when the backward reaches it, instead of storing every node value:
            memory of one ``d_model`` vector per layer and position instead of all node values, for
            about two more forward passes per pair. Default: on with GradDrop (it adds < 10% there).

    Returns:
        :class:`~atpstar.scores.Scores` (float32; float64 for float64 models): ``effect`` = signed
        mean estimate of E[I(n)], ``score`` = the ranking score (mean |Î|, or the GradDrop score).
    """
    kinds = NodeKind.parse(kinds)
    check_pairs(pairs)
    metric = resolve(metric, pairs)
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of prompt pairs per pass, got {batch_size}")
    pairs.check_vocab(model.vocab_size)
    acc = LayerAccumulator(model, kinds, len(pairs), pairs.max_len, keep_per_pair=per_pair, separate_terms=graddrop)
    chunks = [c for g in pairs.groups() if (mine := distributed.shard_group(g)) is not None for c in mine.split(batch_size)]
    start, timing = time.perf_counter(), torch.zeros(2, dtype=torch.float64)
    for chunk in tqdm(chunks, desc=method_name(qk_fix, graddrop), unit="batch", disable=not progress, leave=False):
        _estimate_chunk(model, chunk, kinds, metric, qk_fix, graddrop, acc, timing,
                        graddrop if recompute is None else recompute)
    acc.all_reduce()
    distributed.all_reduce(timing)
    n = len(pairs)
    backward = n * (1 + (model.n_layers - 1) / 2 if graddrop else 1)
    forward = n * (4.0 if (graddrop if recompute is None else recompute) else 2.0)
    cost = Cost(forward=forward, backward=backward, pairs=n, seconds=time.perf_counter() - start,
                backward_ratio=float(timing[1] / timing[0]) if timing[0] > 0 else None)
    info = {"metric": metric.name, "qk_fix": qk_fix, "graddrop": graddrop, "forward_passes": forward,
            "backward_passes": backward, "cost": cost}
    return acc.finish(method_name(qk_fix, graddrop), info=info)


def method_name(qk_fix: bool, graddrop: bool) -> str:
    return {(False, False): "atp", (True, False): "atp+qkfix", (False, True): "atp+graddrop"}.get((qk_fix, graddrop), "atp*")


def _estimate_chunk(model, chunk, kinds, metric, qk_fix: bool, graddrop: bool, acc: LayerAccumulator,
                    timing: Tensor, recompute: bool) -> None:
    """Accumulate one batch of pairs into ``acc``. Adds the seconds of the noise forward and of the
    ordinary backward stream to ``timing`` (the measured backward/forward ratio)."""
    sites = {k.value for k in kinds}
    fix = qk_fix and bool(sites & {"q", "k"})
    noise = Intervention(model, capture=frozenset({RESID} if recompute else sites))
    t0 = time.perf_counter()
    with torch.no_grad():
        run(model, chunk.noise, noise)
    timing[0] += time.perf_counter() - t0
    noise.cache.pop((model.n_layers, RESID), None)
    estimates = _Estimates(model, kinds, noise.cache, fix, graddrop, acc, chunk)
    grad_sites = (sites - {"q", "k"}) | {PROBS} if fix else sites
    watch = {"q", "k", PROBS} if fix and not recompute else set()
    backward = Backward.forward(model, chunk.clean, chunk.pairs, metric, grad_sites, graddrop,
                                on_site=None if recompute else estimates.site, watch=watch)
    estimates.meta = backward.hooks.meta
    before = (lambda layer: estimates.recompute(layer, backward)) if recompute else None
    backward.run(estimates.grad, estimates.block_done, before_block=before)
    timing[1] += backward.seconds
    acc.add_pairs(chunk)


class _Estimates:
    """Consumes the clean forward's site values and the streamed gradients of one batch of pairs.

    Forward: node values become ``noise − clean`` in place (queries/keys under the QK fix keep both).
    Backward: the ordinary stream gives the signed estimates, GradDrop stream ℓ the terms |Î_ℓ|;
    a block's GradDrop terms are summed on the model's device and handed over when it is done."""

    def __init__(self, model, kinds, noise: dict, qk_fix: bool, graddrop: bool, acc: LayerAccumulator, group):
        self.model, self.kinds, self.noise, self.qk_fix = model, kinds, noise, qk_fix
        self.graddrop, self.acc, self.group = graddrop, acc, group
        self.norm = max(model.n_layers - 1, 1)
        self.clean: dict = {}
        self.fixes: dict = {}
        self.terms: dict = {}
        self.meta: dict = {}

    def site(self, layer: int, site: str, x: Tensor) -> None:
        if self.qk_fix and site in ("q", "k", PROBS):
            self.clean[(layer, site)] = x
        else:
            self.noise[(layer, site)].sub_(x)  # noise − clean, in place: nothing else is kept

    def recompute(self, layer: int, backward: Backward) -> None:
        """Node values of block ``layer`` from re-running it on the clean and the noise residual stream."""
        sites = {k.value for k in self.kinds}
        wanted = sites | ({"q", "k", PROBS} if self.qk_fix else set())
        clean = backward.rerun(layer, backward.resid[layer].detach(), wanted)
        noise = backward.rerun(layer, self.noise.pop((layer, RESID)), sites)
        self.meta[layer] = clean.meta[layer] if self.qk_fix else None
        for site in wanted:
            if self.qk_fix and site in ("q", "k", PROBS):
                self.clean[(layer, site)] = clean.cache[(layer, site)]
                if site in sites:
                    self.noise[(layer, site)] = noise.cache[(layer, site)]
            else:
                self.noise[(layer, site)] = noise.cache[(layer, site)].sub_(clean.cache[(layer, site)])

    def grad(self, layer: int, site: str, stream: int, grad: Tensor) -> None:
        if site == PROBS:
            fix = self._fix(layer)
            if NodeKind.Q in self.kinds:
                self._add(NodeKind.Q, layer, stream, fix.query(grad))
            if NodeKind.K in self.kinds:
                self._add(NodeKind.K, layer, stream, fix.key(grad))
        else:
            self._add(NodeKind(site), layer, stream, _dot(NodeKind(site), self.noise[(layer, site)], grad))

    def _fix(self, layer: int) -> QKFix:
        if layer not in self.fixes:
            mask, scale, softcap = self.meta[layer]
            q, k = self.clean[(layer, "q")], self.clean[(layer, "k")]
            if mask is not None:
                mask = mask[..., : k.shape[-2]]
            self.fixes[layer] = QKFix(q, k, scale, q_noise=self.noise.get((layer, "q")), k_noise=self.noise.get((layer, "k")),
                                      mask=mask, softcap=softcap, probs=self.clean[(layer, PROBS)])
        return self.fixes[layer]

    def _add(self, kind: NodeKind, layer: int, stream: int, estimate: Tensor) -> None:
        """``estimate``: (G, units, T) from one stream."""
        if stream == FULL:
            abs_sum = self.acc.add_effect(kind, layer, self.group, estimate)
            if self.graddrop:  # GradDrop of any layer below the node leaves its estimate unchanged
                self.acc.add_terms(kind, layer, self.group, abs_sum * (layer / self.norm))
            return
        term = estimate.abs().sum(0)
        self.terms[kind, layer] = term if (kind, layer) not in self.terms else self.terms[kind, layer] + term

    def block_done(self, layer: int) -> None:
        for kind in self.kinds:
            term = self.terms.pop((kind, layer), None)
            if term is not None:
                self.acc.add_terms(kind, layer, self.group, term / self.norm)
            self.noise.pop((layer, kind.value), None)
        for site in ("q", "k", PROBS):
            self.clean.pop((layer, site), None)
            self.noise.pop((layer, site), None)
        self.fixes.pop(layer, None)


def _dot(kind: NodeKind, delta: Tensor, grad: Tensor) -> Tensor:
    """(G, units, T) ``Δn · ∂L/∂n`` from a site's native layout, in float32 at least."""
    dtype = torch.promote_types(delta.dtype, torch.float32)
    product = delta.to(dtype) * grad.to(dtype)
    if kind is NodeKind.NEURON:
        return product.transpose(1, 2)
    return product.sum(-1)
