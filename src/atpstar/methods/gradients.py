"""Gradients for the attribution estimators: one clean forward, one full backward, and the GradDrop
backward passes (SPEC.md §5), all reusing the same graph.

GradDrop for layer ℓ freezes the block's residual write (attention + MLP output) at its clean
value while the skip connection stays. Then the gradient arriving at the block's *input*
``resid[ℓ]`` equals the gradient at its *output* ``resid[ℓ+1]`` (the identity path only), and the
layers above ℓ are unaffected. So for every node below layer ℓ

    ∂L^(−ℓ)/∂n = VJP from resid[ℓ] down to n, seeded with ∂L/∂resid[ℓ+1]

which is one backward pass through layers < ℓ only: the L GradDrop passes cost about L/2 full
backward passes in total, instead of L. Nodes in layer ℓ get 0 (every path from them to the metric
runs through the frozen write); nodes above ℓ keep their ordinary gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from ..capture import Intervention, run
from ..types import RESID


@dataclass
class CleanRun:
    """A differentiable clean forward pass with the sites needed for attribution captured."""

    model: object
    hooks: Intervention
    value: Tensor
    """(G,) metric per pair."""
    sites: list
    """[(layer, site)] whose gradients are wanted (node kinds and ``probs``), layer-ordered."""

    @classmethod
    def forward(cls, model, input_ids: Tensor, pairs, metric, sites: set, graddrop: bool) -> "CleanRun":
        capture = frozenset(sites | ({RESID} if graddrop else set()))
        hooks = Intervention(model, capture=capture, grad=True)
        with torch.enable_grad():
            value = metric(run(model, input_ids, hooks), pairs)
        ordered = [(layer, site) for layer in range(model.n_layers) for site in sorted(sites)]
        return cls(model, hooks, value, ordered)

    def tensor(self, layer: int, site: str) -> Tensor:
        return self.hooks.cache[(layer, site)]

    def full(self, retain: bool) -> tuple[dict, list]:
        """Ordinary gradients ``{(layer, site): ∂L/∂site}`` and ∂L/∂resid[ℓ] for ℓ = 0..L (if captured)."""
        n_layers = self.model.n_layers
        resid = [self.hooks.cache[(l, RESID)] for l in range(n_layers + 1)] if retain else []
        inputs = [self.tensor(*s) for s in self.sites] + resid
        grads = torch.autograd.grad(self.value.sum(), inputs, retain_graph=retain, allow_unused=True)
        site_grads = {s: _zero_if_none(g, t) for s, g, t in zip(self.sites, grads, inputs)}
        resid_grads = [_zero_if_none(g, t) for g, t in zip(grads[len(self.sites):], resid)]
        return site_grads, resid_grads

    def dropped(self, resid_grads: list) -> Iterator[tuple[int, dict]]:
        """For ℓ = 1..L-1: ``(ℓ, {(layer, site): ∂L^(−ℓ)/∂site})`` for the sites of layers < ℓ.

        Layer 0 is skipped: no node lies below it. One pass at a time; nothing is kept across ℓ.
        """
        n_layers = self.model.n_layers
        for drop in range(1, n_layers):
            below = [s for s in self.sites if s[0] < drop]
            inputs = [self.tensor(*s) for s in below]
            grads = torch.autograd.grad(
                self.hooks.cache[(drop, RESID)], inputs, grad_outputs=resid_grads[drop + 1],
                retain_graph=drop < n_layers - 1, allow_unused=True,
            )
            yield drop, {s: _zero_if_none(g, t) for s, g, t in zip(below, grads, inputs)}


def _zero_if_none(grad, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad
