"""AtP and AtP* (SPEC.md §3–§6): first-order estimates of every node's patching effect at once.

- AtP: ``Î(n) = (n(noise) − n(clean)) · ∂L/∂n`` from one noise forward, one clean forward and one
  backward. Score: ``mean over pairs |Î|``; effect: signed mean of ``Î``.
- QK fix (``qk_fix=True``): query and key nodes get the exact change of the attention
  probabilities, linearised only after the softmax (:mod:`atpstar.qkfix`).
- GradDrop (``graddrop=True``): score ``mean over pairs of (1/(L−1)) Σ_ℓ |Î_ℓ(n)|`` where Î_ℓ uses
  the gradient with layer ℓ's residual write frozen (:mod:`atpstar.methods.gradients`). The signed
  ``effect`` stays the ordinary (QK-fixed) estimate.
- AtP* = both. ``qk_fix=False, graddrop=False`` is plain AtP.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import qkfix
from ..capture import Intervention, run
from ..cost import Cost
from ..metrics import resolve
from ..pairs import PromptPairs
from ..scores import Accumulator, Scores
from ..types import PROBS, NodeKind
from .gradients import CleanRun


def atp(model, pairs: PromptPairs, kinds=None, qk_fix: bool = True, graddrop: bool = True, metric=None,
        batch_size: int = 8, per_pair: bool = False, progress: bool = True) -> Scores:
    """Estimate every node's effect (AtP*, or AtP and its variants via the two flags).

    Args:
        model, pairs, kinds, metric: as for :func:`atpstar.acp`.
        qk_fix: exact softmax change for query/key nodes (fixes attention saturation).
        graddrop: GradDrop ranking score (fixes cancellation between direct and indirect effects).
        batch_size: prompt pairs per forward/backward pass.
        per_pair: keep per-pair signed estimates in ``Scores.per_pair``.

    Returns:
        :class:`~atpstar.scores.Scores`: ``effect`` = signed mean estimate of E[I(n)], ``score`` =
        the ranking score (mean |Î|, or the GradDrop score).
    """
    kinds = NodeKind.parse(kinds)
    metric = resolve(metric, pairs)
    pairs.check_vocab(model.vocab_size)
    acc = Accumulator(model, kinds, len(pairs), pairs.max_len, keep_per_pair=per_pair)
    chunks = [c for g in pairs.groups() for c in g.split(batch_size)]
    start, timing = time.perf_counter(), torch.zeros(2, dtype=torch.float64)
    for chunk in tqdm(chunks, desc=method_name(qk_fix, graddrop), unit="batch", disable=not progress, leave=False):
        effect, score = _estimate_chunk(model, chunk, kinds, metric, qk_fix, graddrop, timing)
        for kind in kinds:
            acc.add(kind, chunk, effect[kind], score[kind])
    n = len(pairs)
    backward = n * (1 + (model.n_layers - 1) / 2 if graddrop else 1)
    cost = Cost(forward=2.0 * n, backward=backward, pairs=n, seconds=time.perf_counter() - start,
                backward_ratio=float(timing[1] / timing[0]))
    info = {"metric": metric.name, "qk_fix": qk_fix, "graddrop": graddrop, "forward_passes": 2 * n,
            "backward_passes": backward, "cost": cost}
    return acc.finish(method_name(qk_fix, graddrop), score="mean_abs", info=info)


def method_name(qk_fix: bool, graddrop: bool) -> str:
    return {(False, False): "atp", (True, False): "atp+qkfix", (False, True): "atp+graddrop"}.get((qk_fix, graddrop), "atp*")


def _estimate_chunk(model, chunk, kinds, metric, qk_fix: bool, graddrop: bool, timing: Tensor) -> tuple[dict, dict]:
    """Per-pair signed estimates and score terms, each {kind: (G, layers, units, T)}. Adds the seconds of
    the noise forward and of the full backward pass to ``timing`` (the measured backward/forward ratio)."""
    sites = {k.value for k in kinds}
    fix = qk_fix and bool(sites & {"q", "k"})
    if fix:
        sites |= {"q", "k", PROBS}
    noise = Intervention(model, capture=frozenset(sites - {PROBS}))
    t0 = time.perf_counter()
    with torch.no_grad():
        run(model, chunk.noise, noise)
    timing[0] += time.perf_counter() - t0
    clean = CleanRun.forward(model, chunk.clean, chunk.pairs, metric, sites, graddrop)
    estimator = Estimator(clean, noise.cache, fix)
    t0 = time.perf_counter()
    grads, resid_grads = clean.full(retain=graddrop)
    timing[1] += time.perf_counter() - t0
    effect = {k: estimator.all_layers(k, grads) for k in kinds}
    if not graddrop:
        return effect, {k: e.abs() for k, e in effect.items()}
    n_layers = model.n_layers
    total = {k: torch.zeros_like(e) for k, e in effect.items()}
    for kind, e in effect.items():  # ℓ below the node's layer: plain estimate; ℓ == layer: 0
        total[kind] += e.abs() * torch.arange(n_layers, dtype=e.dtype).view(1, -1, 1, 1)
    for drop, dropped in clean.dropped(resid_grads):
        for kind in kinds:
            for layer in range(drop):
                total[kind][:, layer] += estimator.one_layer(kind, layer, dropped).abs()
    norm = max(n_layers - 1, 1)
    return effect, {k: t / norm for k, t in total.items()}


class Estimator:
    """``Î`` of one node kind at one layer from clean/noise activations and some gradients."""

    def __init__(self, clean: CleanRun, noise_cache: dict, qk_fix: bool):
        self.clean, self.noise, self.qk_fix = clean, noise_cache, qk_fix
        self._delta: dict = {}

    def all_layers(self, kind: NodeKind, grads: dict) -> Tensor:
        return torch.stack([self.one_layer(kind, layer, grads) for layer in range(self.clean.model.n_layers)], 1)

    def one_layer(self, kind: NodeKind, layer: int, grads: dict) -> Tensor:
        """(G, units, T) estimates."""
        site = kind.value
        if self.qk_fix and kind in (NodeKind.Q, NodeKind.K):
            return self._qk(kind, layer, grads[(layer, PROBS)]).detach()
        if (layer, site) not in self._delta:  # reused by every GradDrop pass
            self._delta[(layer, site)] = self.noise[(layer, site)] - self.clean.tensor(layer, site).detach()
        delta, grad = self._delta[(layer, site)], grads[(layer, site)]
        if kind is NodeKind.NEURON:
            return (delta * grad).transpose(1, 2)
        return (delta * grad).sum(-1)

    def _qk(self, kind: NodeKind, layer: int, grad_probs: Tensor) -> Tensor:
        mask, scale, softcap = self.clean.hooks.meta[layer]
        q, k = self.clean.tensor(layer, "q").detach(), self.clean.tensor(layer, "k").detach()
        probs = self.clean.tensor(layer, PROBS).detach()
        if mask is not None:
            mask = mask[..., : k.shape[-2]]
        if kind is NodeKind.Q:
            return qkfix.query_fix(q, self.noise[(layer, "q")], k, grad_probs, scale, mask, softcap, probs=probs)
        return qkfix.key_fix(q, k, self.noise[(layer, "k")], grad_probs, scale, mask, softcap, probs=probs)
