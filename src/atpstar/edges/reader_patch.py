"""Patch readers, not the residual stream: only reader v sees ``x_v(t) + Δ``.

Per batch row, each patched reader ``(v, t)`` gets the sum ``Δ`` of its edges' writer deltas
``w_u(noise) − w_u(clean)``. A q/k/v reader's head slice of the projection output is replaced by the
projection of ``norm(x + Δ)`` (added as ``W_h (norm(x + Δ) − norm(x))``; rotary and QK-norm apply
after, per head, so splicing before them is exact); an MLP or ``logits`` reader gets ``x + Δ`` as
the input of its own norm (a pre-hook on that norm, which leaves the residual stream itself alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..substrate.capture import Intervention

_CHUNK = 2**24  # floats of writer deltas gathered at once (64 MB in float32)
from .graph import LOGITS, MLP_IN, READER_KINDS, EdgeGraph
from .sites import block_module, column, final_norm, weight


@dataclass
class ReaderDeltas:
    """Summed deltas per patched reader: batch row, reader index, position in the computed window, Δ."""

    row: Tensor
    reader: Tensor
    pos: Tensor
    delta: Tensor

    @classmethod
    def gather(cls, graph: EdgeGraph, deltas: Tensor, row_pair: Tensor, entry_row: Tensor, entry_writer: Tensor,
               entry_reader: Tensor, entry_pos: Tensor, pos0: int = 0) -> "ReaderDeltas":
        """``deltas`` (pairs, W, T, d); entry e adds writer ``entry_writer[e]``'s delta at ``entry_pos[e]``
        (a position of the prompt) to reader ``entry_reader[e]`` of batch row ``entry_row[e]``."""
        n_tok, d = deltas.shape[2], deltas.shape[-1]
        key = (entry_row * graph.n_readers + entry_reader) * n_tok + entry_pos
        uniq, inv = torch.unique(key, return_inverse=True)
        summed = deltas.new_zeros(len(uniq), d)
        step = max(1, _CHUNK // d)  # a diagnostic subset has ~10^5 entries per row: never gather them all at once
        for lo in range(0, len(key), step):
            part = slice(lo, lo + step)
            vec = deltas[row_pair[entry_row[part]], entry_writer[part], entry_pos[part]]
            summed.index_add_(0, inv[part].to(vec.device), vec)
        return cls(uniq // (graph.n_readers * n_tok), uniq // n_tok % graph.n_readers, uniq % n_tok - pos0, summed)

    def take(self, mask: Tensor) -> "ReaderDeltas":
        return ReaderDeltas(self.row[mask], self.reader[mask], self.pos[mask], self.delta[mask.to(self.delta.device)])


@dataclass
class ReaderPatch(Intervention):
    """An Intervention that also patches reader inputs (``deltas``) and checks every one was applied."""

    graph: EdgeGraph | None = None
    deltas: ReaderDeltas | None = None
    _stash: dict = field(default_factory=dict, init=False)
    _reader_hits: set = field(default_factory=set, init=False)

    def _install(self) -> None:
        super()._install()
        model, graph, d = self.model, self.graph, self.deltas
        arch = model.arch
        layer = graph.reader_layer[d.reader]
        kind = graph.reader_kind[d.reader]
        self._expected = set()
        for l in layer.unique().tolist():
            here = layer == l
            if l == graph.n_layers:
                self._norm_hook(final_norm(model), d.take(here), ("logits",))
                continue
            mlp = here & (kind == MLP_IN)
            if mlp.any():
                self._norm_hook(block_module(model, l, arch.mlp_norm), d.take(mlp), (l, "mlp"))
            attn = here & (kind < MLP_IN)
            if attn.any():
                self._attn_hooks(l, d.take(attn))

    def _norm_hook(self, norm, deltas: ReaderDeltas, tag) -> None:
        self._expected.add(tag)

        def hook(module, args):
            x = args[0].clone()
            x.index_put_((deltas.row.to(x.device), deltas.pos.to(x.device)), deltas.delta.to(x.dtype), accumulate=True)
            self._reader_hits.add(tag)
            return (x, *args[1:])

        self._handles.append(norm.register_forward_pre_hook(hook))

    def _attn_hooks(self, layer: int, deltas: ReaderDeltas) -> None:
        model, graph, arch = self.model, self.graph, self.model.arch
        norm = block_module(model, layer, arch.attn_norm)
        self._handles.append(norm.register_forward_pre_hook(lambda m, args: self._stash.__setitem__(layer, args[0])))
        kinds = graph.reader_kind[deltas.reader]
        for path in dict.fromkeys(arch.qkv):
            use = torch.tensor([arch.qkv[int(k)] == path for k in kinds.tolist()], dtype=torch.bool)
            if not use.any():
                continue
            part = deltas.take(use)
            cols = torch.tensor([column(model, READER_KINDS[int(k)], int(u)) for k, u in
                                 zip(graph.reader_kind[part.reader].tolist(), graph.reader_unit[part.reader].tolist())])
            tag = (layer, path)
            self._expected.add(tag)
            module = block_module(model, layer, path)
            self._handles.append(module.register_forward_hook(self._proj_hook(layer, norm, module, part, cols, tag)))

    def _proj_hook(self, layer: int, norm, module, deltas: ReaderDeltas, start: Tensor, tag):
        def hook(mod, args, out):
            x = self._stash[layer]
            rows, pos = deltas.row.to(x.device), deltas.pos.to(x.device)
            xs = x[rows, pos]
            moved = norm.forward(xs + deltas.delta.to(x.dtype)) - norm.forward(xs)
            d_head = self.model.d_head
            cols = (start[:, None] + torch.arange(d_head)).to(x.device)
            w = weight(module)
            change = moved.new_empty(len(moved), d_head, dtype=w.dtype)
            for first in start.unique().tolist():  # one matmul per head slice, not an (E, D, d) weight gather
                here = (start == first).nonzero().flatten().to(x.device)
                change[here] = moved[here].to(w.dtype) @ w[first:first + d_head].t()
            out = out.clone()
            out.index_put_((rows[:, None], pos[:, None], cols), change.to(out.dtype), accumulate=True)
            self._reader_hits.add(tag)
            return out

        return hook

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stash.clear()
        super().__exit__(exc_type, exc, tb)
        if exc_type is None and self._expected - self._reader_hits:
            raise RuntimeError(f"reader patches never applied: {sorted(map(str, self._expected - self._reader_hits))}")


__all__ = ["LOGITS", "ReaderDeltas", "ReaderPatch"]
