"""The forward pass of a circuit: every reader reads, per incoming edge, the writer's output of this
run (edge in the circuit) or of the noise run (edge outside it).

Reader v at position t reads ``r_v(t) = x(t) + Σ_{u -> v ∉ C} (w_u^noise(t) − w_u^this(t))``, with
``x`` the residual stream of this very run and ``w_u^this`` the writes of this run, which are
themselves computed from the (mixed) inputs of their own readers: the circuit is recomputed through
itself. This is EAP-IG's ``evaluate_graph`` ("patching" intervention). Only readers see the mixture;
the residual stream itself is never overwritten. A q/k/v reader's head slice of the projection
output gets ``W_h (norm(x + Δ_v) − norm(x))`` added (as :mod:`atpstar.edges.reader_patch` does),
an MLP or ``logits`` reader gets ``x + Δ_v`` as the input of its own norm.

Each batch row carries its own keep-mask (``1`` where the edge is outside the circuit: read the
noise write), so many circuits and pairs share one forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..edges.graph import MLP_IN, READER_KINDS, EdgeGraph
from ..edges.sites import block_module, column, final_norm, first, weight
from ..edges.writes import head_writes
from ..substrate.capture import Intervention
from ..types import RESID


@dataclass
class MixedRun(Intervention):
    """An Intervention whose readers read the circuit's mixture of this run's and the noise run's writes.

    ``noise``: (B, W, T, d) the noise run's writes per batch row; ``outside``: (B, W, R) or
    (B, W, R, T) float, 1 where the edge is outside the circuit (and exists), else 0."""

    graph: EdgeGraph | None = None
    noise: Tensor | None = None
    outside: Tensor | None = None
    _diff: Tensor | None = field(default=None, init=False)
    _filled: int = field(default=0, init=False)
    _stash: dict = field(default_factory=dict, init=False)
    _prefix: dict = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.capture = frozenset({RESID, *(["head"] if self.graph.per_head else [])})
        super().__post_init__()

    # --- this run's writes, in writer order: kept as (noise write − this run's write) -------------
    def _append(self, writes: Tensor) -> None:
        if self._diff is None:
            self._diff = torch.empty_like(self.noise)
            self._prefix = {0: self.noise.new_zeros(self.noise[:, 0].shape)}
        lo, hi = self._filled, self._filled + writes.shape[1]
        torch.sub(self.noise[:, lo:hi], writes.to(self.noise.dtype), out=self._diff[:, lo:hi])
        self._prefix[hi] = self._prefix[lo] + self._diff[:, lo:hi].sum(1)  # Σ of the first hi writers' differences
        self._filled = hi

    def _keep(self, layer: int, hidden: Tensor) -> None:
        super()._keep(layer, hidden)
        if layer == 0:
            self._append(hidden[:, None])

    def __call__(self, layer: int, site, x: Tensor) -> Tensor:
        x = super().__call__(layer, site, x)
        if self.graph.per_head and getattr(site, "value", site) == "head":
            self._append(head_writes(self.model, layer, x))
        return x

    # --- the readers' inputs ---------------------------------------------------------------------
    def _delta(self, readers: Tensor) -> Tensor | None:
        """(B, len(readers), T, d) Σ over outside edges of (noise write − this run's write); None if 0.

        Readers of one hook read the same first k writers (k: those that may feed them). When fewer of those
        writers have an edge inside the circuit than outside it (small circuits), the sum is the first k
        writers' total less the inside edges' share; otherwise the outside edges' sum itself."""
        n_w = self._filled
        outside = self.outside[:, :n_w, readers.to(self.outside.device)]
        if not bool(outside.any()):
            return None
        valid = self.graph.valid[:n_w, readers.cpu()].to(outside.device)
        k = int(valid.any(1).nonzero().max()) + 1
        inside = (valid if outside.ndim == 3 else valid[..., None]).to(outside.dtype) - outside
        used_in, used_out = (_writers(m) for m in (inside, outside))
        if k in self._prefix and bool(valid[:k].all()) and int(used_in.sum()) < int(used_out.sum()):
            whole = self._prefix[k][:, None]
            return whole.expand(-1, len(readers), -1, -1) if not used_in.any() else whole - _contract(self._diff[:, :n_w], inside, used_in)
        return _contract(self._diff[:, :n_w], outside, used_out)

    def _install(self) -> None:
        super()._install()
        model, graph, sites = self.model, self.graph, self.model.arch
        for layer in range(model.n_layers):
            if not graph.per_head:
                self._write_hook(block_module(model, layer, sites.attn_write))
            self._write_hook(block_module(model, layer, sites.mlp_write))
            here = graph.reader_layer == layer
            mlp = (here & (graph.reader_kind == MLP_IN)).nonzero().flatten()
            self._norm_hook(block_module(model, layer, sites.mlp_norm), mlp)
            attn = (here & (graph.reader_kind < MLP_IN)).nonzero().flatten()
            self._attn_hooks(layer, attn)
        logits = (graph.reader_layer == graph.n_layers).nonzero().flatten()
        self._norm_hook(final_norm(model), logits)

    def _write_hook(self, module) -> None:
        self._handles.append(module.register_forward_hook(lambda m, a, out: self._append(first(out)[:, None])))

    def _norm_hook(self, norm, readers: Tensor) -> None:
        def hook(module, args):
            delta = self._delta(readers)
            if delta is None:
                return None
            return (args[0] + delta[:, 0].to(args[0].dtype), *args[1:])

        self._handles.append(norm.register_forward_pre_hook(hook))

    def _attn_hooks(self, layer: int, readers: Tensor) -> None:
        model, graph, sites = self.model, self.graph, self.model.arch
        norm = block_module(model, layer, sites.attn_norm)

        def keep_input(module, args):
            delta = self._delta(readers)
            self._stash[layer] = None if delta is None else (norm.forward(args[0][:, None] + delta.to(args[0].dtype))
                                                             - norm.forward(args[0])[:, None])

        self._handles.append(norm.register_forward_pre_hook(keep_input))
        kinds, units = graph.reader_kind[readers].tolist(), graph.reader_unit[readers].tolist()
        for path in dict.fromkeys(sites.qkv):
            mine = [i for i, k in enumerate(kinds) if sites.qkv[k] == path]
            starts = torch.tensor([column(model, READER_KINDS[kinds[i]], units[i]) for i in mine])
            module = block_module(model, layer, path)
            self._handles.append(module.register_forward_hook(self._proj_hook(layer, module, torch.tensor(mine), starts)))

    def _proj_hook(self, layer: int, module, mine: Tensor, starts: Tensor):
        def hook(mod, args, out):
            moved = self._stash.get(layer)
            if moved is None:
                return None
            d_head = self.model.d_head
            w = weight(module)
            cols = (starts[:, None] + torch.arange(d_head)).to(out.device)  # (R', D)
            rows = w[cols.flatten()].reshape(len(starts), d_head, -1)  # (R', D, d)
            change = torch.einsum("brtd,rkd->btrk", moved[:, mine.to(moved.device)].to(w.dtype), rows)
            out = out.clone()
            out[..., cols.flatten()] += change.reshape(*change.shape[:2], -1).to(out.dtype)
            return out

        return hook


def _writers(mask: Tensor) -> Tensor:
    """(W,) bool: writers with any edge in ``mask`` ((B, W, R) or (B, W, R, T)) in any row."""
    return mask.transpose(0, 1).reshape(mask.shape[1], -1).any(1)


def _contract(diff: Tensor, mask: Tensor, used: Tensor) -> Tensor:
    """(B, R, T, d) Σ_w mask[b, w, r(, t)] · diff[b, w, t, :]; ``used``: the writers with any nonzero mask
    entry (only those are gathered, when they are few)."""
    if int(used.sum()) * 2 < len(used):
        diff, mask = diff[:, used.to(diff.device)], mask[:, used.to(mask.device)]
    if mask.ndim == 3:
        return torch.einsum("bwtd,bwr->brtd", diff, mask.to(diff.dtype))
    return torch.einsum("bwtd,bwrt->brtd", diff, mask.to(diff.dtype))


def outside_mask(graph: EdgeGraph, circuits: Tensor) -> Tensor:
    """``valid & ~circuit`` as float: (C, W, R) for position-free circuits, (C, W, R, T) per position."""
    valid = graph.valid if circuits.ndim == 3 else graph.valid[..., None]
    return (valid & ~circuits).float()



@dataclass
class GradMixedRun(MixedRun):
    """:class:`MixedRun`, differentiable in ``outside`` and through this run's writes. The writes' differences are
    kept as one (B, T, d, w) tensor per writer hook (:attr:`chunks`); each hook's readers read one batched matrix
    product of the first k writers' differences (those that may feed them) with their shares (no buffers written in
    place). ``outside`` may be fractional: edge u -> v then reads ``outside`` of u's noise write and the rest of u's
    write of this run. ``share`` instead of ``outside``: every existing edge reads that share, and readers fed by
    every writer before them read a running sum of the differences (no product over the writers at all). Each
    hook's sum is kept in :attr:`sums` as ``(readers, k, (B, R', T, d) tensor)``, so that the metric's gradient at
    every reader's input can be taken (:meth:`edge_gradients`). Slower than :class:`MixedRun`; used where the
    gradient is wanted."""

    share: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.share is None) == (self.outside is None):
            raise ValueError("GradMixedRun takes either outside (per-edge shares) or share (one share for every edge)")
        self.chunks: list[tuple[int, int, Tensor]] = []
        self.sums: list[tuple[Tensor, int, Tensor]] = []
        self._running: dict[int, Tensor] = {}

    def _append(self, writes: Tensor) -> None:
        lo, hi = self._filled, self._filled + writes.shape[1]
        diff = self.noise[:, lo:hi] - writes.to(self.noise.dtype)  # (B, w, T, d)
        self.chunks.append((lo, hi, diff.permute(0, 2, 3, 1).contiguous()))
        if self.share is not None:
            self._running[hi] = diff.sum(1) if lo == 0 else self._running[lo] + diff.sum(1)  # Σ of the first hi
        self._filled = hi

    def _delta(self, readers: Tensor) -> Tensor | None:
        cpu = readers.cpu()
        valid = self.graph.valid[:self._filled, cpu]
        feeding = valid.any(1).nonzero()
        if not len(feeding):
            return None
        k = int(feeding.max()) + 1  # the first k writers may feed these readers
        if self.share is not None and k in self._running and bool(valid[:k].all()):
            total = (self._running[k] * self.share)[:, None].expand(-1, len(readers), -1, -1)  # (B, R', T, d)
        else:
            diff = self._diffs(k)  # (B, T, d, k)
            if self.share is not None:
                mask = (valid[:k] * self.share).to(device=diff.device, dtype=diff.dtype).expand(diff.shape[0], -1, -1)
            else:
                mask = self.outside[:, :k][:, :, readers.to(self.outside.device)].to(diff.dtype)  # (B, k, R'[, T])
            if mask.ndim == 3:
                total = torch.matmul(diff.flatten(1, 2), mask).unflatten(1, diff.shape[1:3])  # (B, T, d, R')
            else:
                total = torch.matmul(diff, mask.permute(0, 3, 1, 2))  # (B, T, d, R')
            total = total.permute(0, 3, 1, 2)  # (B, R', T, d)
        self.sums.append((readers, k, total))
        return total

    def _diffs(self, k: int) -> Tensor:
        """(B, T, d, k) the first k writers' differences, one tensor (the chunks concatenated)."""
        parts = [diff for lo, _, diff in self.chunks if lo < k]
        whole = parts[0] if len(parts) == 1 else torch.cat(parts, -1)
        return whole[..., :k]

    def edge_gradients(self, value: Tensor) -> Tensor:
        """(B, W, R, T) float64: the derivative of ``value`` (a scalar of this run) with respect to each edge's share
        of its writer's noise write at each position, ⟨∂value/∂(reader v's input at t), noise − this run's write of u
        at t⟩, at this run's ``outside`` (whose per-position version is ``outside`` at every position)."""
        grads = torch.autograd.grad(value, [total for _, _, total in self.sums])
        with torch.no_grad():
            diff = self._diffs(self._filled)
            out = torch.zeros(diff.shape[0], self.graph.n_writers, self.graph.n_readers, diff.shape[1],
                              dtype=torch.float64)
            for (readers, k, _), grad in zip(self.sums, grads):
                cpu = readers.cpu()
                part = torch.matmul(grad.permute(0, 2, 1, 3), diff[..., :k].to(grad.dtype))  # (B, T, R', k)
                valid = self.graph.valid[:k, cpu]
                out[:, :k, cpu] = part.permute(0, 3, 2, 1).double().cpu() * valid[None, ..., None]
        return out


__all__ = ["GradMixedRun", "MixedRun", "outside_mask"]
