"""Exact edge patching, the ground truth of every edge estimate.

``I(u -> v) = L(M(xc | v's input at t <- x_v(t) + w_u(noise)(t) − w_u(clean)(t))) − L(M(xc))``: only
reader v sees the change (:mod:`.reader_patch`). Several edges into one reader add their deltas;
edges into different readers patch independently. Writes are captured once per pair; each batched
clean forward gives every row its own reader deltas, computes only the blocks from the row's lowest
reader (below: the clean residual stream) and the positions from the lowest patched position
(before: the clean keys/values), as node patching does (:mod:`atpstar.substrate.patching`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..cost import Cost
from ..metrics import resolve
from ..pairs import PromptPairs, check_pairs
from ..substrate.capture import run
from ..substrate.joint import clean_base
from ..substrate.batching import plan_batches
from ..substrate.patching import auto_batch_size, check_batch_size
from ..types import RESID
from .edgeset import EdgeSet
from .graph import EdgeGraph
from .reader_patch import ReaderDeltas, ReaderPatch
from .scores import EdgeScores
from .writes import write_deltas


@dataclass
class EdgeRuns:
    """One length group: writer deltas (G, W, T, d), the clean cache and the clean metric (G,)."""

    group: object
    deltas: Tensor
    clean: dict
    base: Tensor
    moved: Tensor | None = None  # (G, W, T) bool: the writer's delta is not 0 there

    def __post_init__(self):
        if self.moved is None:
            self.moved = (self.deltas != 0).any(-1).cpu()

    @classmethod
    def capture(cls, model, graph: EdgeGraph, group, metric) -> "EdgeRuns":
        deltas, cache, logits = write_deltas(model, graph, group.clean, group.noise)
        return cls(group, deltas, cache, metric(logits, group.pairs))


@dataclass
class EdgePlan:
    """One length group's batches of (set, pair) rows, planned (and costed) before any runs."""

    runs: EdgeRuns
    edges: EdgeSet
    own_pos: Tensor
    """(N,) each edge's position in this group's prompts (< 0: absent)."""
    missing: Tensor
    """(sets,) bool: sets with no edge at a position this group has (NaN: single patches only)."""
    order: Tensor
    """Rows (set * G + pair) to run, sorted by their lowest (position, reader layer)."""
    e: Tensor
    """The rows' entries (edge index), grouped by row; ``bounds`` cuts them per row."""
    entry_rank: Tensor
    bounds: Tensor
    batches: list
    costs: Tensor
    """(batches,) forward-pass equivalents of each batch."""


class EdgePatcher:
    """Exact single-edge and joint edge patches on every prompt pair, writes captured once.

    Args: ``model``, ``pairs``, ``metric`` as for :func:`atpstar.acp`; ``graph`` (default
    ``EdgeGraph.of(model)``); ``batch_size``: rows (patch × pair) per forward pass, default from
    ``memory_mb``."""

    def __init__(self, model, pairs: PromptPairs, metric=None, graph: EdgeGraph | None = None,
                 batch_size: int | None = None, memory_mb: float = 1024):
        check_batch_size(batch_size)
        check_pairs(pairs)
        pairs.check_vocab(model.vocab_size)
        self.model, self.pairs, self.metric = model, pairs, resolve(metric, pairs)
        self.graph = EdgeGraph.resolve(model, graph)
        self.batch_size, self.memory_mb = batch_size, memory_mb
        start = time.perf_counter()
        self.groups = [EdgeRuns.capture(model, self.graph, g, self.metric) for g in pairs.groups()]
        self.capture_seconds = time.perf_counter() - start
        self.stats = {"forward_passes": 4 * len(pairs), "forward_equivalents": 4.0 * len(pairs),
                      "seconds": time.perf_counter() - start}

    @property
    def base(self) -> Tensor:
        """(pairs,) clean metric."""
        return clean_base(self.groups, len(self.pairs))

    def edges(self, edges) -> EdgeSet:
        return EdgeSet.parse(self.graph, edges, self.pairs.max_len)

    def single(self, edges, progress: bool = False) -> Tensor:
        """(N, pairs) float64 effect of patching each edge alone; NaN where a pair lacks the position."""
        edge_set = self.edges(edges)
        members = torch.arange(len(edge_set))
        return self._effects(edge_set, members, torch.arange(len(edge_set)), len(edge_set), progress, nan=True)

    def effects(self, edges, sets, progress: bool = False) -> Tensor:
        """(sets, pairs) float64 effect of patching each edge set jointly. ``sets``: a (sets, N) bool
        membership matrix over ``edges`` or a list of index tensors. An edge at a position a pair lacks
        is left out of that pair's patch; an empty set has effect 0."""
        edge_set = self.edges(edges)
        if isinstance(sets, Tensor) and sets.dtype == torch.bool:
            if sets.ndim != 2 or sets.shape[1] != len(edge_set):
                raise ValueError(f"membership matrix must be (sets, {len(edge_set)}) bool, got {tuple(sets.shape)}")
            set_of, edge_of = sets.nonzero(as_tuple=True)
            n_sets = sets.shape[0]
        else:
            sets = [torch.as_tensor(s, dtype=torch.long) for s in sets]
            set_of = torch.cat([torch.full((len(s),), i) for i, s in enumerate(sets)]) if sets else torch.zeros(0, dtype=torch.long)
            edge_of = torch.cat(sets) if sets else torch.zeros(0, dtype=torch.long)
            n_sets = len(sets)
        return self._effects(edge_set, set_of, edge_of, n_sets, progress, nan=False)

    def _effects(self, edges: EdgeSet, set_of: Tensor, edge_of: Tensor, n_sets: int, progress: bool, nan: bool) -> Tensor:
        plans = [self._plan_group(runs, edges, set_of, edge_of, n_sets, nan) for runs in self.groups]
        return self._run(plans, n_sets, progress)[0]

    # --- the edge kind's patcher (atpstar.units.UnitPatcher): single edges, planned before they run -------
    capture_forward = 4.0
    """The captures every patch builds on: 4 forward passes per pair (clean and noise writes)."""
    captured = True

    def capture(self) -> list[EdgeRuns]:
        """The captured writes (taken when the patcher was made)."""
        return self.groups

    def plan(self, edges: EdgeSet) -> list["EdgePlan"]:
        """The batches that patch every edge of ``edges`` alone, on every pair that has its position."""
        index = torch.arange(len(edges))
        return [self._plan_group(runs, edges, index, index, len(edges), True) for runs in self.groups]

    @staticmethod
    def cost(plans: list["EdgePlan"]) -> float:
        """Forward-pass equivalents the plans will cost."""
        return float(sum(float(p.costs.sum()) for p in plans))

    def run(self, edges: EdgeSet, plans: list["EdgePlan"]) -> tuple[Tensor, Tensor, Tensor]:
        """(N, pairs) float64 effects of the planned single-edge patches (NaN: position absent from the
        pair), and per edge the forward-pass equivalents and seconds spent (each batch's shared by its rows)."""
        return self._run(plans, len(edges), False)

    def static(self, edges: EdgeSet) -> Tensor:
        """(N,) bool: the edge's writer writes the same on the clean and noise prompt of every pair, at its
        position (exact effect 0)."""
        live = torch.zeros(len(edges), dtype=torch.bool)
        for runs in self.groups:
            moved = runs.moved.any(0)  # (W, T) of this length group
            own_pos = edges.pos - runs.group.offset
            here = own_pos >= 0
            live[here] |= moved[edges.writer[here], own_pos[here]]
        return ~live

    def joint(self, edges: EdgeSet, sets) -> Tensor:
        """(sets, pairs) effect of patching each set of ``edges`` together (see :meth:`effects`)."""
        return self.effects(edges, sets)

    def spent(self, wall: float) -> Cost:
        """Every forward pass this patcher ran (captures included)."""
        return Cost(forward=self.stats["forward_equivalents"], pairs=len(self.pairs), seconds=wall)

    def _run(self, plans: list["EdgePlan"], n_sets: int, progress: bool) -> tuple[Tensor, Tensor, Tensor]:
        start = time.perf_counter()
        out = torch.zeros(n_sets, len(self.pairs), dtype=torch.float64)
        cost, seconds = torch.zeros(n_sets, dtype=torch.float64), torch.zeros(n_sets, dtype=torch.float64)
        bar = tqdm(total=n_sets * len(self.pairs), desc="edge patching", unit="patch", disable=not progress, leave=False)
        with torch.no_grad():
            for plan in plans:
                self._run_group(plan, out, cost, seconds, bar)
        bar.close()
        self.stats["seconds"] += time.perf_counter() - start
        return out, cost, seconds

    def _plan_group(self, runs: EdgeRuns, edges: EdgeSet, set_of, edge_of, n_sets: int, nan: bool) -> "EdgePlan":
        """Rows (set, pair) of one length group. An entry whose writer delta is exactly 0 on that pair is
        a no-op and is dropped; a row left without entries has effect 0 and costs nothing. Rows are
        sorted by their lowest (position, reader layer) and batched cost-aware, as node patching is."""
        graph, group, n_layers = self.graph, runs.group, self.model.n_layers
        n_group, n_tok = group.clean.shape
        own_pos = edges.pos - group.offset
        keep = own_pos[edge_of] >= 0
        missing = torch.zeros(n_sets, dtype=torch.bool)
        if nan:
            missing[:] = True
            missing[set_of[keep]] = False
        set_of, edge_of = set_of[keep], edge_of[keep]
        # entries per (pair, entry), the no-ops dropped
        pair = torch.arange(n_group).repeat_interleave(len(edge_of))
        entry = torch.arange(len(edge_of)).repeat(n_group)
        e = edge_of[entry]
        live = runs.moved[pair, edges.writer[e], own_pos[e]]
        pair, e, row = pair[live], e[live], (set_of[entry] * n_group + pair)[live]
        reader_layer = graph.reader_layer[edges.reader[e]]
        key = own_pos[e] * (n_layers + 1) + reader_layer
        big = torch.iinfo(torch.long).max
        row_key = torch.full((n_sets * n_group,), big).scatter_reduce(0, row, key, "amin")
        order = torch.argsort(row_key, stable=True)
        order = order[row_key[order] < big]
        rank = torch.empty(n_sets * n_group, dtype=torch.long)
        rank[order] = torch.arange(len(order))
        by_row = torch.argsort(rank[row], stable=True)
        e, entry_rank = e[by_row], rank[row][by_row]
        bounds = torch.searchsorted(entry_rank, torch.arange(len(order) + 1))
        size = self.batch_size or self._rows_per_batch(n_tok, bounds)
        first_key = row_key[order]
        batches = plan_batches(first_key // (n_layers + 1), first_key % (n_layers + 1), n_layers + 1, n_tok, size, 1.0)
        costs = torch.zeros(len(batches), dtype=torch.float64)
        for i, batch in enumerate(batches):  # == _patched's measure: rows * (L - layer0) * (T - pos0) / (L * T)
            b = e[int(bounds[batch.start]):int(bounds[batch.stop])]
            layer0, pos0 = min(int(graph.reader_layer[edges.reader[b]].min()), n_layers), int(own_pos[b].min())
            costs[i] = (batch.stop - batch.start) * (n_layers - layer0) * (n_tok - pos0) / (n_layers * n_tok)
        return EdgePlan(runs, edges, own_pos, missing, order, e, entry_rank, bounds, batches, costs)

    def _run_group(self, plan: "EdgePlan", out: Tensor, cost: Tensor, seconds: Tensor, bar) -> None:
        runs, edges, group = plan.runs, plan.edges, plan.runs.group
        n_group = group.clean.shape[0]
        out[plan.missing.nonzero().flatten()[:, None], group.index] = torch.nan
        for batch, planned in zip(plan.batches, plan.costs.tolist()):
            t0 = time.perf_counter()
            rows = plan.order[batch]
            lo, hi = int(plan.bounds[batch.start]), int(plan.bounds[batch.stop])
            entry_row = plan.entry_rank[lo:hi] - batch.start
            sets, pairs = rows // n_group, rows % n_group
            b = plan.e[lo:hi]
            value, spent = self._patched(runs, edges.writer[b], edges.reader[b], plan.own_pos[b], entry_row, pairs)
            out[sets, group.index[pairs]] = (value - runs.base[pairs]).double().cpu()
            if abs(spent - planned) > 1e-9 * max(1.0, spent):
                raise RuntimeError(f"internal error: an edge batch cost {spent} forward passes, planned {planned}")
            self.stats["forward_passes"] += len(rows)
            self.stats["forward_equivalents"] += spent
            share = torch.full((len(rows),), 1.0 / len(rows), dtype=torch.float64)
            cost.index_add_(0, sets, share * spent)
            seconds.index_add_(0, sets, share * (time.perf_counter() - t0))
            bar.update(len(rows))
        bar.update(len(plan.missing) * n_group - len(plan.order))

    def _rows_per_batch(self, n_tok: int, bounds: Tensor) -> int:
        """Automatic rows per forward: the activations' share, and at most ``memory_mb`` of reader deltas
        (a row with many entries, e.g. a diagnostic subset, patches up to every reader at every position,
        each holding ~8 d_model-wide vectors)."""
        size = auto_batch_size(self.model, n_tok, self.memory_mb)
        if len(bounds) < 2:
            return size
        per_row = min(int((bounds[1:] - bounds[:-1]).max()), self.graph.n_readers * n_tok)
        vectors = per_row * 8 * self.model.d_model * torch.finfo(self.model.dtype).bits // 8
        return int(max(1, min(size, self.memory_mb * 2**20 // max(1, vectors))))

    def _patched(self, runs: EdgeRuns, writer, reader, pos, entry_row, row_pair) -> tuple[Tensor, float]:
        """Metric of one batch (row r: pair ``row_pair[r]`` with its entries' reader deltas) and its cost."""
        model, graph, group = self.model, self.graph, runs.group
        n_layers, n_tok = model.n_layers, group.clean.shape[1]
        layer0, pos0 = int(graph.reader_layer[reader].min()), int(pos.min())
        deltas = ReaderDeltas.gather(graph, runs.deltas, row_pair, entry_row, writer, reader, pos, pos0)
        start = runs.clean[(layer0, RESID)][row_pair, pos0:].contiguous() if layer0 else None
        prefix = tuple([runs.clean[(l, s)][row_pair, :, :pos0] for l in range(n_layers)] for s in ("k", "v"))
        hooks = ReaderPatch(model, skip_below=layer0, start=start, graph=graph, deltas=deltas)
        value = self.metric(run(model, group.clean[row_pair], hooks, prefix=prefix), group.pairs.select(row_pair))
        return value, len(row_pair) * (n_layers - min(layer0, n_layers)) * (n_tok - pos0) / (n_layers * n_tok)


def edge_acp(model, pairs: PromptPairs, edges=None, metric=None, graph: EdgeGraph | None = None,
             batch_size: int | None = None, per_pair: bool = False, progress: bool = False) -> EdgeScores:
    """Exact effect of patching each edge alone, per pair and averaged.

    ``edges``: None (every edge at every position: W×R×T patches per pair, for small models), an
    :class:`EdgeSet`, a list of names (``"L0.head.H1@3 -> L2.q.H0@3"``) or a table with writer, reader, pos.
    Returns :class:`EdgeScores`: ``effect`` = mean effect, ``score`` = |mean effect| (NaN: not computed)."""
    patcher = EdgePatcher(model, pairs, metric, graph, batch_size)
    graph, n_pos = patcher.graph, pairs.max_len
    edge_set = EdgeSet.every(graph, n_pos) if edges is None else patcher.edges(edges)
    start = time.perf_counter()
    values = patcher.single(edge_set, progress)  # (N, P)
    shape = (graph.n_writers, graph.n_readers, n_pos)
    effect = torch.full(shape, torch.nan, dtype=torch.float64)
    index = (edge_set.writer, edge_set.reader, edge_set.pos)
    effect[index] = values.nanmean(1)
    full = None
    if per_pair:
        full = torch.full((len(pairs), *shape), torch.nan)
        full[(slice(None), *index)] = values.t().float()
    cost = Cost(forward=patcher.stats["forward_equivalents"], pairs=len(pairs), seconds=time.perf_counter() - start)
    info = {"metric": patcher.metric.name, "cost": cost, "clean_metric": float(patcher.base.mean())}
    return EdgeScores("edge_acp", graph, effect, effect.abs(), len(pairs), full, info)


def edge_patch(model, pairs: PromptPairs, edges, sets=None, metric=None, graph: EdgeGraph | None = None,
               batch_size: int | None = None) -> Tensor:
    """(sets, pairs) effects of patching edge sets jointly (``sets`` over ``edges``; None: all edges as one set)."""
    patcher = EdgePatcher(model, pairs, metric, graph, batch_size)
    edge_set = patcher.edges(edges)
    if sets is None:
        sets = torch.ones(1, len(edge_set), dtype=torch.bool)
    return patcher.effects(edge_set, sets)
