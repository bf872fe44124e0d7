"""Every writer's write to the residual stream, per position: (batch, W, T, d_model).

``embed``: the residual stream entering block 0. A head's write: its output ``z`` (the ``head``
site, before the output projection) through its slice of the output projection, without the
shared bias. ``L{ℓ}.attn`` (heads not additive): the attention's whole residual write. ``L{ℓ}.mlp``:
the MLP's residual write (Gemma 3: after its post-feedforward norm). Writes of one run sum, with
the output projections' biases, to the residual stream entering each later block.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..substrate.capture import Intervention, run
from ..types import RESID
from .graph import EdgeGraph
from .sites import block_module, first, weight


def head_writes(model, layer: int, z: Tensor) -> Tensor:
    """(B, H, T, d) per-head writes from head outputs ``z`` (B, H, T, D) of ``layer``."""
    w_o = weight(block_module(model, layer, model.arch.o_proj))  # (d, H*D)
    w_o = w_o.reshape(model.d_model, model.n_heads, model.d_head)
    return torch.einsum("bhtk,dhk->bhtd", z, w_o)


def capture_writes(model, graph: EdgeGraph, ids: Tensor, extra=frozenset()) -> tuple[Tensor, dict, Tensor]:
    """Writes (B, W, T, d) of the run on ``ids`` (no grad), the Intervention cache (which also holds
    ``extra`` sites and the residual stream entering every block) and the last position's logits."""
    arch = model.arch
    captured: dict = {}
    handles = []
    for layer in range(model.n_layers):
        paths = [("mlp", arch.mlp_write)] + ([] if graph.per_head else [("attn", arch.attn_write)])
        for name, path in paths:
            hook = lambda m, a, out, key=(layer, name): captured.__setitem__(key, first(out))  # noqa: E731
            handles.append(block_module(model, layer, path).register_forward_hook(hook))
    hooks = Intervention(model, capture=frozenset({RESID, *(["head"] if graph.per_head else []), *extra}))
    try:
        with torch.no_grad():
            logits = run(model, ids, hooks)
    finally:
        for h in handles:
            h.remove()
    parts = [hooks.cache[(0, RESID)][:, None]]
    for layer in range(model.n_layers):
        if graph.per_head:
            parts.append(head_writes(model, layer, hooks.cache[(layer, "head")]))
        else:
            parts.append(captured[(layer, "attn")][:, None])
        parts.append(captured[(layer, "mlp")][:, None])
    return torch.cat(parts, 1), hooks.cache, logits


def write_deltas(model, graph: EdgeGraph, clean: Tensor, noise: Tensor) -> tuple[Tensor, dict, Tensor]:
    """``w_u(noise) − w_u(clean)`` (B, W, T, d), the clean run's cache (residual stream, k, v) and logits."""
    clean_w, cache, logits = capture_writes(model, graph, clean, extra=frozenset({"k", "v"}))
    noise_w, _, _ = capture_writes(model, graph, noise)
    return noise_w.sub_(clean_w), cache, logits
