"""Gradients at the readers' private inputs, streamed block by block (ordinary and GradDrop).

``∂L/∂r_v(t)`` with ``r_v`` reader v's own copy of its input: the gradient flows through v only.

- MLP and ``logits`` readers: the input of the reader's own norm is replaced, in the clean forward,
  by a copy (``x.clone()``) that nothing else reads; its gradient is the reader's gradient.
- q/k/v readers (the attention's norm output feeds every head): the gradient of the projection
  output is taken per head (its ``d_head`` columns), brought back through that head's projection
  weights ``W_h^T`` and the norm's Jacobian at the clean input (a vector-Jacobian product).

The clean forward and the block-by-block backward are :class:`~atpstar.methods.gradients.Backward`'s,
so the GradDrop streams arrive at the readers exactly as they arrive at the node sites.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..methods.gradients import Backward, _Tap
from ..substrate.capture import Intervention, run
from ..types import PROBS, RESID, NodeKind
from .graph import MLP_IN, READER_KINDS, EdgeGraph
from .sites import block_module, column, final_norm, weight

MLP_SITE, LOGITS_SITE = "reader_mlp", "reader_logits"


def proj_site(path: str) -> str:
    return f"reader_proj:{path}"


@dataclass
class ReaderTap(_Tap):
    """The clean forward's tap, with private copies of the MLP/logits readers' inputs and the
    projection outputs of the q/k/v readers as gradient sites; keeps each attention norm's input."""

    norm_inputs: dict = field(default_factory=dict)

    def _install(self) -> None:
        super()._install()
        model, arch = self.model, self.model.arch
        for layer in range(model.n_layers):
            norm = block_module(model, layer, arch.attn_norm)
            self._handles.append(norm.register_forward_pre_hook(self._keep_input(layer)))
            self._handles.append(block_module(model, layer, arch.mlp_norm).register_forward_pre_hook(
                self._private(layer, MLP_SITE)))
            for path in dict.fromkeys(arch.qkv):
                module = block_module(model, layer, path)
                self._handles.append(module.register_forward_hook(
                    lambda m, a, out, layer=layer, site=proj_site(path): self(layer, site, out)))
        self._handles.append(final_norm(model).register_forward_pre_hook(self._private(model.n_layers, LOGITS_SITE)))

    def _keep_input(self, layer: int):
        def hook(module, args):
            self.norm_inputs[layer] = args[0].detach()

        return hook

    def _private(self, layer: int, site: str):
        def hook(module, args):
            return (self(layer, site, args[0].clone()), *args[1:])

        return hook


def clean_backward(model, ids: Tensor, pairs, metric, qk_fix: bool, graddrop: bool, on_site) -> Backward:
    """The clean forward with grad, ready to stream reader (and, with the QK fix, attention) gradients."""
    sites = {MLP_SITE, LOGITS_SITE, *(proj_site(p) for p in model.arch.qkv)}
    watch = {"q", "k"} if qk_fix else set()
    if qk_fix:
        sites.add(PROBS)
    hooks = ReaderTap(model, capture=frozenset({RESID}), grad=True, sites=frozenset(sites), watch=frozenset(watch),
                      on_site=on_site)
    with torch.enable_grad():
        value = metric(run(model, ids, hooks), pairs)
    return Backward(model, hooks, value, graddrop)


class AttnReaders:
    """The q/k/v readers of one layer: their projection columns and the map gradient -> reader input."""

    def __init__(self, model, graph: EdgeGraph, layer: int, kinds=(0, 1, 2)):
        arch = model.arch
        self.model, self.layer = model, layer
        wanted = torch.isin(graph.reader_kind, torch.tensor(kinds)) & (graph.reader_kind < MLP_IN)
        self.index = ((graph.reader_layer == layer) & wanted).nonzero().flatten()
        kinds, units = graph.reader_kind[self.index].tolist(), graph.reader_unit[self.index].tolist()
        self.paths = [arch.qkv[k] for k in kinds]
        cols = torch.tensor([column(model, READER_KINDS[k], u) for k, u in zip(kinds, units)])
        self.cols = cols[:, None] + torch.arange(model.d_head)
        self.norm = block_module(model, layer, arch.attn_norm)
        self.weights = {p: weight(block_module(model, layer, p)) for p in dict.fromkeys(self.paths)}

    def input_grads(self, proj_grads: dict, x: Tensor) -> Tensor:
        """(readers, T, d) ``∂L/∂r_v`` from ``{path: (1, T, out) gradient of the projection output}`` and
        the clean norm input ``x`` (1, T, d)."""
        parts = []
        for path in dict.fromkeys(self.paths):
            sel = torch.tensor([p == path for p in self.paths])
            cols = self.cols[sel].to(x.device)  # (R', D)
            grad = proj_grads.get(path)
            if grad is None:
                parts.append((sel, x.new_zeros(int(sel.sum()), x.shape[1], x.shape[2])))
                continue
            g = grad[0][:, cols].permute(1, 0, 2)  # (R', T, D)
            w = self.weights[path][cols]  # (R', D, d)
            parts.append((sel, torch.einsum("rtk,rkd->rtd", g.to(w.dtype), w)))
        out = x.new_zeros(len(self.paths), x.shape[1], x.shape[2])
        for sel, value in parts:
            out[sel.to(out.device)] = value.to(out.dtype)
        return norm_vjp(self.norm, x, out)


def norm_vjp(norm, x: Tensor, cotangents: Tensor) -> Tensor:
    """``J_norm(x)^T c`` for each cotangent ``c`` (R, T, d) at the clean input ``x`` (1, T, d)."""
    with torch.enable_grad():
        xr = x.detach().expand_as(cotangents).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(norm.forward(xr), xr, cotangents)
    return grad


class _Stop(Exception):
    pass


@dataclass
class _QueriesKeys(Intervention):
    """Capture one block's queries and keys, then stop the block (nothing after them is computed)."""

    def __call__(self, layer: int, site, x: Tensor) -> Tensor:
        x = super().__call__(layer, site, x)
        if getattr(site, "value", site) == NodeKind.K.value:
            raise _Stop
        return x


def queries_keys(backward: Backward, layer: int, hidden: Tensor) -> tuple[Tensor, Tensor]:
    """Queries (B, H, T, D) and keys (B, KV, T, D) of block ``layer`` run on the residual stream ``hidden``
    (B, T, d), exactly through its norm, projections, rotary embedding and QK-norm."""
    model = backward.model
    args, kwargs = backward.hooks.block_inputs[layer]
    hooks = _QueriesKeys(model, capture=frozenset({"q", "k"}))
    arch = model.arch
    value = block_module(model, layer, arch.qkv[2]) if arch.qkv_layout == "separate" else None
    own = value.__dict__.get("forward") if value is not None else None  # accelerate wraps forward per instance
    if value is not None:  # values are not needed: a zero value projection saves its matmul
        out_features = weight(value).shape[0]
        value.forward = lambda x: x.new_zeros(*x.shape[:-1], out_features)
    try:
        with torch.no_grad(), hooks:
            model.layers[layer](hidden, *args, **kwargs)
    except _Stop:
        pass
    finally:
        if value is not None:
            del value.forward
            if own is not None:
                value.forward = own
    return hooks.cache[(layer, "q")], hooks.cache[(layer, "k")]
