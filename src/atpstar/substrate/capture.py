"""One context manager that captures, patches and skips, for any supported model.

Sites (see :mod:`atpstar.types`): the node kinds ``q k v head neuron``, the attention
probabilities ``probs`` and the residual stream ``resid`` entering each block (``resid`` at
``layer == n_layers`` is the output of the last block). Native tensor layouts:

- ``q``, ``head``: (batch, heads, pos, d_head); ``k``, ``v``: (batch, kv_heads, pos, d_head)
- ``neuron``: (batch, pos, d_mlp); ``probs``: (batch, heads, pos, pos); ``resid``: (batch, pos, d_model)

Every hook is removed on exit, also when the body raises. A patch whose site is never reached
raises, so a patch can never silently do nothing.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import attention
from .arch import get_module
from .model import Model
from ..types import PROBS, RESID, NodeKind


@dataclass
class Patch:
    """Overwrite one site: batch row ``rows[i]`` gets ``values[i]`` at ``(units[i], pos[i])``."""

    rows: Tensor
    units: Tensor
    pos: Tensor
    values: Tensor

    def apply(self, site: str, x: Tensor) -> Tensor:
        x = x.clone()
        index = tuple(i.to(x.device) for i in node_index(site, self.rows, self.units, self.pos))
        x[index] = self.values.to(device=x.device, dtype=x.dtype)
        return x


@dataclass
class MaskPatch:
    """Overwrite a site wherever ``mask`` is True with ``source[rows]`` (joint patches of node sets).

    ``mask`` is (batch, units, pos) in node order; ``source`` the noise run's site tensor in its native
    layout, of which positions ``pos0..`` are used (all positions for k/v, whose site holds the prefix)."""

    mask: Tensor
    source: Tensor
    rows: Tensor
    pos0: int = 0

    def apply(self, site: str, x: Tensor) -> Tensor:
        if NodeKind(site) is NodeKind.NEURON:
            mask, values = self.mask.transpose(1, 2), self.source[self.rows, self.pos0:]
        else:
            mask, values = self.mask.unsqueeze(-1), self.source[self.rows, :, self.pos0:]
        return torch.where(mask.to(x.device), values.to(device=x.device, dtype=x.dtype), x).contiguous()


def node_index(kind, rows: Tensor, units: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Index tuple selecting nodes ``(unit, pos)`` of batch rows ``rows`` in a site's native layout."""
    if NodeKind(kind) is NodeKind.NEURON:
        return rows, pos, units
    return rows, units, pos


@dataclass
class Intervention:
    """Capture and/or patch sites during the forward passes run inside ``with``.

    Args:
        model: a :class:`~atpstar.substrate.model.Model`.
        capture: site names to keep in :attr:`cache` as ``{(layer, site): tensor}``.
        patches: ``{(layer, site): Patch}`` applied to every forward pass in the block.
        grad: make block 0's input a leaf requiring grad, so captured tensors are differentiable
            although the weights are frozen.
        skip_below / start: run only blocks ``>= skip_below``; the blocks below are replaced by
            ``start`` (the residual stream entering block ``skip_below``, batch-aligned).
    """

    model: Model
    capture: frozenset = frozenset()
    patches: dict = field(default_factory=dict)
    grad: bool = False
    skip_below: int = 0
    start: Tensor | None = None
    cache: dict = field(default_factory=dict, init=False)
    meta: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.capture = frozenset(s.value if isinstance(s, NodeKind) else s for s in self.capture)
        self.patches = {(layer, _site_name(site)): p for (layer, site), p in self.patches.items()}
        for layer, site in self.patches:
            if not 0 <= layer < self.model.n_layers:
                raise IndexError(f"patch at layer {layer}: the model has layers 0..{self.model.n_layers - 1}")
        self._handles: list = []
        self._stubbed: list = []
        self._hit: set = set()

    # --- called from the attention function and the module hooks -------------------------------
    def __call__(self, layer: int, site: str, x: Tensor) -> Tensor:
        site = _site_name(site)
        patch = self.patches.get((layer, site))
        if patch is not None:
            x = patch.apply(site, x)
            self._hit.add((layer, site))
        if site in self.capture:
            self.cache[(layer, site)] = x
        return x

    def attention_meta(self, layer: int, mask, scaling: float, softcap) -> None:
        """Keep what the QK fix needs to recompute scores exactly as the model does."""
        if PROBS in self.capture:
            self.meta[layer] = (mask, scaling, softcap)

    # --- context management ---------------------------------------------------------------------
    def __enter__(self) -> "Intervention":
        if self.model.hf.config._attn_implementation != attention.IMPL:
            raise RuntimeError("this model was not prepared by atpstar: wrap it with atpstar.load_model(model, tokenizer)")
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        attention._ACTIVE.append(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if attention._ACTIVE and attention._ACTIVE[-1] is self:
            attention._ACTIVE.pop()
        self._remove()
        if exc_type is None:
            missed = sorted(set(self.patches) - self._hit)
            if missed:
                raise RuntimeError(
                    f"patches never applied (no such site reached in the forward pass): {missed}; "
                    "were all blocks skipped, or is the model not wrapped by atpstar.load_model?"
                )

    def _install(self) -> None:
        model = self.model
        wants = self._wanted()
        if NodeKind.NEURON.value in wants:
            for layer, block in enumerate(model.layers):
                down = get_module(block, model.arch.down)
                self._handles.append(down.register_forward_pre_hook(self._neuron_hook(layer)))
        if RESID in self.capture or self.grad:
            for layer, block in enumerate(model.layers):
                self._handles.append(block.register_forward_pre_hook(self._resid_hook(layer), with_kwargs=True))
            last = model.n_layers
            self._handles.append(model.layers[-1].register_forward_hook(lambda m, a, out: self._keep(last, out)))
        for layer in range(self.skip_below):
            block = model.layers[layer]
            self._stubbed.append((block, block.__dict__.get("forward")))  # accelerate wraps forward per instance
            block.forward = _stub(self.start)

    def _wanted(self) -> set:
        """Site names this intervention must see (module hooks are installed only for these)."""
        return set(self.capture) | {site for _, site in self.patches}

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block, own_forward in self._stubbed:
            del block.forward
            if own_forward is not None:
                block.forward = own_forward
        self._stubbed.clear()

    def _neuron_hook(self, layer: int):
        def hook(module, args):
            return (self(layer, NodeKind.NEURON, args[0]), *args[1:])

        return hook

    def _resid_hook(self, layer: int):
        def hook(module, args, kwargs):
            if args:
                hidden = args[0]
            else:
                hidden = kwargs["hidden_states"]
            if self.grad and layer == 0 and not hidden.requires_grad:
                hidden = hidden.detach().requires_grad_(True)
            self._keep(layer, hidden)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        return hook

    def _keep(self, layer: int, hidden: Tensor) -> None:
        if RESID in self.capture:
            self.cache[(layer, RESID)] = hidden


def _site_name(site) -> str:
    return site.value if isinstance(site, NodeKind) else str(site)


def _stub(start: Tensor):
    def forward(*args, **kwargs):
        return start

    return forward


def run(model: Model, input_ids: Tensor, intervention: Intervention | None = None, last_only: bool = True,
        prefix: tuple[list, list] | None = None) -> Tensor:
    """Forward pass returning logits: (batch, vocab) at the last position, or (batch, pos, vocab).

    ``prefix``: per-layer (keys, values) of the first P positions (as the attention sees them,
    batch-aligned). Then only positions P.. are computed, attending to the given keys/values, and
    sites of q/head/neuron/probs/resid hold positions P.. only (k/v sites hold all positions).
    """
    kwargs = {"logits_to_keep": 1} if last_only else {}
    kwargs["use_cache"] = False
    ids = input_ids.to(model.device)
    if prefix is not None and prefix[0][0].shape[-2] > 0:
        kwargs.update(_prefix_kwargs(model, ids, prefix))
        ids = ids[:, prefix[0][0].shape[-2]:]
    if intervention is None:
        out = model.hf(input_ids=ids, **kwargs).logits
    else:
        with intervention:
            out = model.hf(input_ids=ids, **kwargs).logits
    if out.dtype in (torch.float16, torch.bfloat16):
        out = out.float()  # metrics in float32 (the logits themselves are as precise as the model)
    return out[:, -1] if last_only else out


def _prefix_kwargs(model: Model, ids: Tensor, prefix: tuple[list, list]) -> dict:
    from transformers import DynamicCache

    keys, values = prefix
    start, end = keys[0].shape[-2], ids.shape[1]
    cache = DynamicCache()  # full layers everywhere: a sliding-window layer would drop prefix keys; the mask applies the window
    for layer, (k, v) in enumerate(zip(keys, values)):
        cache.update(k, v, layer)
    positions = torch.arange(start, end, device=ids.device).expand(ids.shape[0], -1)
    return {_cache_argument(type(model.hf)): cache, "use_cache": True, "position_ids": positions}


@functools.lru_cache(maxsize=None)
def _cache_argument(hf_class) -> str:
    """The forward's name for a key/value cache: ``cache`` (transformers ≥ 5.24, which deprecates the
    old name with a FutureWarning) or ``past_key_values`` (earlier releases)."""
    return "cache" if "cache" in inspect.signature(hf_class.forward).parameters else "past_key_values"


__all__ = ["Intervention", "MaskPatch", "Patch", "node_index", "run"]
