"""Gradients for the attribution estimators, streamed block by block.

One clean forward pass records the graph; the backward then runs **one block at a time, from the
top**, as a chain of vector-Jacobian products cut at the residual stream ``resid[m]`` (the input of
block ``m``; every path from a lower block to the metric passes through it). Gradients of the
node sites (``q k v head neuron probs``) are delivered to a consumer by tensor hooks **as they
arrive**, so nothing keeps every gradient of every site, and each block's saved activations are
released as soon as its last backward product is done: memory falls during the backward as in a
plain ``loss.backward()``.

GradDrop for layer ℓ freezes block ℓ's residual write (attention + MLP output) at its clean value
while the skip connection stays. Then the gradient entering ``resid[ℓ]`` equals the ordinary
gradient ``∂L/∂resid[ℓ+1]`` (the identity path only) and layers above ℓ are unaffected. So GradDrop
stream ℓ starts at ``resid[ℓ]`` seeded with ``∂L/∂resid[ℓ+1]`` and runs through blocks ℓ−1 … 0.
Block ``m`` is traversed by the ordinary stream and by every GradDrop stream ℓ > m, one after the
other, before block ``m − 1``: the streams cost ``L + L(L−1)/2`` block backward products, about
``L/2 + 1`` full backward passes, and only ``L`` residual-sized gradients are alive at once. Nodes
in layer ℓ get 0 from stream ℓ (every path runs through the frozen write); nodes above keep their
ordinary gradient.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..substrate.capture import Intervention, run
from ..types import RESID

FULL = 0
"""Stream id of the ordinary gradient. GradDrop streams are numbered by their dropped layer 1..L-1."""


@dataclass
class _Tap(Intervention):
    """A differentiable forward that hands every wanted site to ``on_site`` and hooks its gradient."""

    sites: frozenset = frozenset()
    """Sites whose gradients go to ``on_grad``."""
    watch: frozenset = frozenset()
    """Further sites shown to ``on_site`` (clean values needed without their gradients)."""
    on_site: Callable | None = None
    on_grad: Callable | None = None
    stream: int = FULL
    block_inputs: dict = field(default_factory=dict)
    """{layer: (args, kwargs)} of each block call except its hidden states (to re-run one block alone)."""

    def __call__(self, layer: int, site: str, x: Tensor) -> Tensor:
        x = super().__call__(layer, site, x)
        site = getattr(site, "value", site)
        if self.on_site is not None and (site in self.sites or site in self.watch):
            self.on_site(layer, site, x.detach())
        if site in self.sites and x.requires_grad:
            x.register_hook(lambda grad, layer=layer, site=site: self._arrived(layer, site, grad))
        return x

    def _wanted(self) -> set:
        return super()._wanted() | set(self.sites) | set(self.watch)

    def _resid_hook(self, layer: int):
        inner = super()._resid_hook(layer)

        def hook(module, args, kwargs):
            self.block_inputs[layer] = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
            return inner(module, args, kwargs)

        return hook

    def attention_meta(self, layer: int, mask, scaling: float, softcap) -> None:
        self.meta[layer] = (mask, scaling, softcap)

    def _arrived(self, layer: int, site: str, grad: Tensor) -> None:
        if self.on_grad is not None:
            self.on_grad(layer, site, self.stream, grad)


@dataclass
class Backward:
    """A clean forward pass whose backward runs block by block, streaming site gradients to a consumer.

    Build it with :meth:`forward`, then call :meth:`run` once. ``seconds`` reports the time of the
    ordinary stream's backward products (without the consumer's work), the measured backward cost.
    """

    model: object
    hooks: _Tap
    value: Tensor
    """(G,) metric per pair."""
    graddrop: bool
    seconds: float = 0.0
    consumer_seconds: float = field(default=0.0, repr=False)
    resid: list = field(default_factory=list, repr=False)
    """During :meth:`run`: the clean residual stream entering each block not yet done (graph tensors)."""

    @classmethod
    def forward(cls, model, input_ids: Tensor, pairs, metric, sites, graddrop: bool,
                on_site: Callable | None = None, watch=frozenset()) -> "Backward":
        """Clean forward with grad. ``sites``: site names whose gradients are wanted (node kinds and
        ``probs``); ``on_site(layer, site, clean_value)`` sees each of them, and the ``watch`` sites,
        as the forward passes."""
        hooks = _Tap(model, capture=frozenset({RESID}), grad=True, sites=frozenset(sites), watch=frozenset(watch),
                     on_site=on_site)
        with torch.enable_grad():
            value = metric(run(model, input_ids, hooks), pairs)
        return cls(model, hooks, value, graddrop)

    def run(self, on_grad: Callable, on_block: Callable | None = None, keep: bool = False,
            before_block: Callable | None = None) -> list:
        """Deliver ``on_grad(layer, site, stream, grad)`` for every site gradient of every stream, and
        ``on_block(layer)`` once block ``layer`` is done for all streams (its gradients are complete);
        ``before_block(layer)`` runs before the first gradient of a block arrives.

        Returns the ordinary gradients ``∂L/∂resid[m]`` for m = 0..L (the residual stream entering
        each block; ``m == L``: the last block's output) if ``keep``, else only ``[∂L/∂resid[0]]``.
        The graph is released on return."""
        n_layers = self.model.n_layers
        resid = self.resid = [self.hooks.cache.pop((m, RESID)) for m in range(n_layers + 1)]
        self.hooks.on_grad = self._timed(on_grad)
        before_block = self._timed(before_block or (lambda m: None))
        current = self._vjp(FULL, self.value.sum(), resid[n_layers], None, retain=False)  # ∂L/∂resid[m+1]
        kept, above = [current], None  # above: ∂L/∂resid[m+2]
        drops: dict = {}  # GradDrop stream ℓ -> its gradient at the input of the block being processed
        for m in range(n_layers - 1, -1, -1):
            if self.graddrop and above is not None:  # stream ℓ = m+1 enters block m with ∂L/∂resid[m+2]
                drops[m + 1] = above.to(resid[m + 1].device)
            streams = [FULL, *sorted(drops)]
            before_block(m)
            for i, stream in enumerate(streams):
                seed = current if stream == FULL else drops[stream]
                out = self._vjp(stream, resid[m + 1], resid[m], seed, retain=i < len(streams) - 1)
                if stream == FULL:
                    above, current = current, out
                else:
                    drops[stream] = out
            resid[m + 1] = None
            kept.append(current)
            if not keep:
                kept = kept[-1:]
            if on_block is not None:
                self._timed(on_block)(m)
        self.hooks.on_grad = None
        self.resid = []
        return kept[::-1]

    def rerun(self, layer: int, hidden: Tensor, sites) -> Intervention:
        """Run block ``layer`` alone (no grad) on ``hidden`` with the clean run's other block inputs;
        returns the Intervention whose ``cache`` holds ``sites`` of that block and ``meta`` its attention."""
        args, kwargs = self.hooks.block_inputs[layer]
        hooks = Intervention(self.model, capture=frozenset(sites))
        with torch.no_grad(), hooks:
            self.model.layers[layer](hidden, *args, **kwargs)
        return hooks

    def _vjp(self, stream: int, output: Tensor, below: Tensor, seed, retain: bool) -> Tensor:
        """One backward product from ``output`` down to ``below`` (hooks fire for the sites between)."""
        self.hooks.stream = stream
        start, before = time.perf_counter(), self.consumer_seconds
        (grad,) = torch.autograd.grad(output, below, grad_outputs=seed, retain_graph=retain, allow_unused=True)
        if stream == FULL:
            self.seconds += time.perf_counter() - start - (self.consumer_seconds - before)
        return torch.zeros_like(below) if grad is None else grad

    def _timed(self, on_grad: Callable) -> Callable:
        def call(*args):
            start = time.perf_counter()
            on_grad(*args)
            self.consumer_seconds += time.perf_counter() - start

        return call


@dataclass
class CleanRun:
    """Explicit gradients of every site (ordinary and GradDrop), collected from :class:`Backward`.

    The estimators consume gradients as they stream; this keeps them all, for tests, debugging and
    research code that wants the raw tensors (memory: every site's gradient for every stream)."""

    model: object
    backward: Backward
    sites: list
    """[(layer, site)] whose gradients are wanted (node kinds and ``probs``), layer-ordered."""
    like: dict
    """{(layer, site): clean value} shapes for the sites (zeros where no gradient arrives)."""

    @classmethod
    def forward(cls, model, input_ids: Tensor, pairs, metric, sites: set, graddrop: bool) -> "CleanRun":
        like: dict = {}
        backward = Backward.forward(model, input_ids, pairs, metric, sites, graddrop,
                                    on_site=lambda layer, site, x: like.__setitem__((layer, site), x))
        ordered = [(layer, site) for layer in range(model.n_layers) for site in sorted(sites)]
        return cls(model, backward, ordered, like)

    @property
    def value(self) -> Tensor:
        return self.backward.value

    def full(self, retain: bool) -> tuple[dict, list]:
        """Ordinary gradients ``{(layer, site): ∂L/∂site}`` and ``∂L/∂resid[ℓ]`` for ℓ = 0..L.
        ``retain``: also compute the GradDrop gradients (then read them with :meth:`dropped`)."""
        self.backward.graddrop = retain
        got: dict = {}
        resid = self.backward.run(lambda layer, site, stream, grad: got.setdefault(stream, {}).__setitem__((layer, site), grad),
                                  keep=True)
        self._streams = got
        return self._complete(got.get(FULL, {}), self.sites), resid

    def dropped(self, resid_grads: list | None = None) -> Iterator[tuple[int, dict]]:
        """For ℓ = 1..L-1: ``(ℓ, {(layer, site): ∂L^(−ℓ)/∂site})`` for the sites of layers < ℓ."""
        for drop in range(1, self.model.n_layers):
            below = [s for s in self.sites if s[0] < drop]
            yield drop, self._complete(self._streams.get(drop, {}), below)

    def _complete(self, grads: dict, sites: list) -> dict:
        return {s: grads[s] if s in grads else torch.zeros_like(self.like[s]) for s in sites}


__all__ = ["FULL", "Backward", "CleanRun"]
