"""The paper's baselines on edges, with edges (writer -> reader at one position) as the units.

Subsampling, Blocks, Hierarchical and Iterative with the node estimators' own arithmetic
(:func:`~atpstar.methods.subsampling.subsample`, :func:`~atpstar.methods.blocks.block_means`,
:func:`~atpstar.methods.hierarchical.descend`, :func:`~atpstar.methods.iterative.iterate`), with edges in
place of nodes and exact joint edge patches (:class:`~.patching.EdgePatcher`: several edges into one
reader add their deltas, edges into different readers patch independently) in place of the
JointPatcher (Iterative: exact single-edge patches, pair by pair). The options and what they mean
are the node versions' (docs/study.md: ``p``, ``samples``, ``size``, ``order``, ``branching``,
``threshold``, ``relative``, ``seed``).

**Scope**: every edge at every position (``edges=None``) or the given edges (names, an
:class:`~.edgeset.EdgeSet` or a table with ``writer``, ``reader``, ``pos``), duplicates dropped; an
edge that does not exist or a position out of range is a ValueError/IndexError naming it. Edges
outside the scope are NaN in the result.

**Order** (what "contiguous" means): edges are sorted by (reader layer, reader, writer, position)
(``order="writer"``, the default; ``"unit"`` is accepted for it) or (reader layer, reader, position,
writer) (``order="position"``, Blocks only). A reader's incoming edges are thus contiguous, as a
layer's nodes are for the node baselines: a **Block** is a run of ``size`` edges into *one* reader
(it never crosses readers; the last block of a reader may be smaller), so with the default order a
block is one reader's edges from a few consecutive writers at every position. **Hierarchical**
descends reader layer → reader → writer → position (a group of one edge is a leaf, exact edge
patching): level 0 is one group per reader layer; a group spanning several readers is split between
readers, one inside a reader between writers, one inside a (writer, reader) between positions.

Results are :class:`~.scores.EdgeScores` ((W, R, T) float64 tensors) with ``info["cost"]``: the
EdgePatcher's forward-pass equivalents (4 capture passes per pair, plus each patch's partial pass:
only the layers from its lowest reader and the positions from its lowest position are computed).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..methods.blocks import block_means
from ..cost import Cost
from ..methods.common import check_positive_int, joint_cost, rank_score
from ..methods.hierarchical import check_threshold, descend
from ..methods.iterative import check_options as check_iterative, iterate
from ..methods.subsampling import check_p, chunk_size, subsample
from ..metrics import resolve
from ..pairs import PromptPairs, check_pairs
from .edgeset import EdgeSet
from .graph import EdgeGraph
from .patching import EdgePatcher
from .scores import EdgeScores

ORDERS = ("writer", "position")
"""Inside a reader: writer-major (each writer's positions in turn) or position-major."""


def subsampling(model, pairs: PromptPairs, edges=None, metric=None, p: float = 0.01, samples: int = 1000,
                graph: EdgeGraph | None = None, batch_size: int | None = None, memory_mb: float = 1024,
                progress: bool = False, seed: int = 0) -> EdgeScores:
    """Every edge's included-minus-excluded estimate from joint patches of ``samples`` random edge subsets
    (each edge in with probability ``p``): ``effect`` = the estimate, ``score`` = its magnitude (0 for an
    edge never in, or never out of, a subset: ``info["unestimated"]``). Options as
    :func:`atpstar.subsampling`; ``edges``, ``graph`` as :func:`edge_acp`."""
    check_p(p, "edge")
    check_positive_int("samples", samples, 2, "random subsets; the estimate needs subsets with and without each edge")
    start = time.perf_counter()
    patcher, edge_set, _ = _setup(model, pairs, edges, metric, graph, batch_size, memory_mb, "writer")
    chunk = chunk_size(len(edge_set), p, pairs, samples, memory_mb, _entry_bytes(model))
    with tqdm(total=samples, desc="edge subsampling", unit="subset", disable=not progress, leave=False) as bar:
        estimate, ok = subsample(patcher, edge_set, p, samples, chunk, seed, bar)
    info = {"p": p, "samples": samples, "seed": seed, "unestimated": int((~ok).sum())}
    return _result("edge subsampling", patcher, edge_set, estimate, estimate.abs().nan_to_num(0.0), info, start)


def blocks(model, pairs: PromptPairs, edges=None, metric=None, size: int = 16, order: str = "writer",
           graph: EdgeGraph | None = None, batch_size: int | None = None, memory_mb: float = 1024,
           progress: bool = False, seed: int = 0) -> EdgeScores:
    """Each block of ``size`` consecutive edges into one reader patched jointly; every member gets
    ``effect`` = its block's mean effect and ``score`` = its magnitude (members of a block tie).
    ``order``: ``"writer"`` (default) or ``"position"`` inside a reader (module docstring). Size 1 is
    exact edge patching. ``seed`` is unused (deterministic), accepted for a uniform signature."""
    check_positive_int("size", size, 1, "edges per block")
    order = _order(order)
    start = time.perf_counter()
    patcher, edge_set, key = _setup(model, pairs, edges, metric, graph, batch_size, memory_mb, order)
    graph, n_pos = patcher.graph, pairs.max_len
    reader = key // (graph.n_writers * n_pos)  # (reader layer, reader): blocks never cross a reader
    with tqdm(desc="edge blocks", unit="block", disable=not progress, leave=False) as bar:
        mean, _, n_blocks = block_means(patcher, edge_set, reader, size, bar, **_limits(model, pairs, memory_mb))
    info = {"size": size, "order": order, "blocks": n_blocks}
    return _result("edge blocks", patcher, edge_set, mean, mean.abs(), info, start)


def hierarchical(model, pairs: PromptPairs, edges=None, metric=None, branching: int = 4, threshold: float = 0.1,
                 relative: bool = True, graph: EdgeGraph | None = None, batch_size: int | None = None,
                 memory_mb: float = 1024, progress: bool = False, seed: int = 0) -> EdgeScores:
    """Recursive joint patching of edge groups, reader layer → reader → writer → position → edge,
    descending only into groups whose |mean effect| exceeds ``threshold`` (absolute, or ``relative``
    to the level's largest). Ranking (``score``, a dense rank, highest first): leaves by |exact
    effect|, then the other edges by the depth of their deepest patched group, then its |effect|;
    ``effect``: the leaf's exact effect or that group's mean effect. Options as
    :func:`atpstar.hierarchical`; ``info``: ``groups`` per level, ``leaves``, ``cost``."""
    check_positive_int("branching", branching, 2, "children per split group")
    check_threshold(threshold, relative)
    start = time.perf_counter()
    patcher, edge_set, key = _setup(model, pairs, edges, metric, graph, batch_size, memory_mb, "writer")
    graph, n_pos = patcher.graph, pairs.max_len
    reader = key // (graph.n_writers * n_pos)
    levels = [reader, key // n_pos]  # readers, then (reader, writer); positions below
    with tqdm(desc="edge hierarchical", unit="group", disable=not progress, leave=False) as bar:
        effect, _, score, leaf, groups = descend(patcher, edge_set, reader // graph.n_readers, levels, branching,
                                                 threshold, relative, bar, presence=pairs.presence(edge_set.pos),
                                                 **_limits(model, pairs, memory_mb))
    info = {"branching": branching, "threshold": threshold, "relative": relative, "groups": groups,
            "leaves": int(leaf.sum())}
    return _result("edge hierarchical", patcher, edge_set, effect, score, info, start)


def iterative(model, pairs: PromptPairs, edges=None, metric=None, per_round: int = 10, rounds: int | None = None,
              graph: EdgeGraph | None = None, batch_size: int | None = None, memory_mb: float = 1024,
              progress: bool = False, seed: int = 0) -> EdgeScores:
    """Exact edge patching of every unverified edge on one more pair per round, then the ``per_round`` best
    (by |running mean|) verified on the pairs not seen yet (:func:`atpstar.iterative`'s schedule, with
    :func:`edge_acp`'s patches). ``effect``: the exact mean for verified edges, the running mean otherwise;
    ``score``: verified edges first. Each round patches every unverified edge of the scope once: restrict
    ``edges=`` on a real model (~10⁶ edges per pair)."""
    rounds = check_iterative(pairs, per_round, rounds)
    start = time.perf_counter()
    graph = EdgeGraph.resolve(model, graph)
    edge_set, _ = _scope(graph, pairs, edges, "writer")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    patch = lambda mask, idx: _patch_pairs(model, pairs, graph, edge_set, mask, idx, metric, batch_size,  # noqa: E731
                                           memory_mb)
    effect, verified, cost, edge_pairs = iterate(len(edge_set), order, rounds, per_round, patch, progress,
                                                 "edge iterative")
    graph_shape = (graph.n_writers, graph.n_readers, pairs.max_len)
    index = (edge_set.writer, edge_set.reader, edge_set.pos)
    out = [torch.full(graph_shape, torch.nan, dtype=torch.float64) for _ in range(2)]
    out[0][index], out[1][index] = effect, rank_score(verified.double(), effect.abs())
    info = {"metric": resolve(metric, pairs).name, "per_round": per_round, "rounds": rounds, "seed": seed,
            "edges": len(edge_set), "verified": int(verified.sum()), "edge_pairs": edge_pairs,
            "pair_order": order.tolist(),
            "cost": Cost(cost.forward, pairs=len(pairs), seconds=time.perf_counter() - start)}
    return EdgeScores("edge iterative", graph, out[0], out[1], len(pairs), None, info)


def _patch_pairs(model, pairs, graph, edges: EdgeSet, mask: Tensor, idx: Tensor, metric, batch_size, memory_mb):
    """Exact effects of ``edges[mask]`` on the pairs ``idx`` (positions re-aligned to their own length):
    (sum over those pairs, pairs where the edge exists, Cost)."""
    sub = pairs.select(idx)
    chosen = edges.take(mask)
    local = EdgeSet(chosen.writer, chosen.reader, chosen.pos - (pairs.max_len - sub.max_len))
    present = local.pos >= 0
    sums, counts = torch.zeros(len(chosen), dtype=torch.float64), torch.zeros(len(chosen), dtype=torch.long)
    if not present.any():
        return sums, counts, Cost(pairs=len(sub))
    patcher = EdgePatcher(model, sub, metric, graph, batch_size, memory_mb)
    values = patcher.single(local.take(present))  # (N, pairs): NaN where a pair lacks the position
    counts[present] = (~values.isnan()).sum(1)
    sums[present] = values.nan_to_num(0.0).sum(1)
    return sums, counts, Cost(forward=patcher.stats["forward_equivalents"], pairs=len(sub))


EDGE_BASELINES = {"subsampling": subsampling, "blocks": blocks, "hierarchical": hierarchical, "iterative": iterative}
"""The joint-patching baselines by their ``--method`` names."""


# --- shared pieces ---------------------------------------------------------------------------------
def _order(order) -> str:
    if order == "unit":
        return "writer"
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (inside a reader: each writer's positions in turn, or every "
                         f"writer at one position in turn), got {order!r}")
    return order


def sort_key(graph: EdgeGraph, edges: EdgeSet, n_pos: int, order: str = "writer") -> Tensor:
    """(N,) int64 key ordering edges by (reader layer, reader, writer, pos), or ``order="position"`` by
    (reader layer, reader, pos, writer). ``key // (W * n_pos)`` names the reader (with its layer:
    ``// R`` gives the reader layer), writer-major ``key // n_pos`` the (reader, writer)."""
    order = _order(order)
    reader = graph.reader_layer[edges.reader] * graph.n_readers + edges.reader
    if order == "writer":
        return (reader * graph.n_writers + edges.writer) * n_pos + edges.pos
    return (reader * n_pos + edges.pos) * graph.n_writers + edges.writer


def _scope(graph: EdgeGraph, pairs, edges, order: str) -> tuple[EdgeSet, Tensor]:
    """The scope sorted by :func:`sort_key`, duplicates dropped, and its keys."""
    check_pairs(pairs)
    n_pos = pairs.max_len
    edge_set = EdgeSet.every(graph, n_pos) if edges is None else EdgeSet.parse(graph, edges, n_pos)
    key, index = torch.sort(sort_key(graph, edge_set, n_pos, order), stable=True)
    keep = torch.ones(len(key), dtype=torch.bool)
    keep[1:] = key[1:] != key[:-1]
    return edge_set.take(index[keep]), key[keep]


def _setup(model, pairs, edges, metric, graph, batch_size, memory_mb, order):
    """(EdgePatcher, the scope sorted by :func:`sort_key` without duplicates, its keys)."""
    graph = EdgeGraph.resolve(model, graph)
    edge_set, key = _scope(graph, pairs, edges, order)
    return EdgePatcher(model, pairs, metric, graph, batch_size, memory_mb), edge_set, key


def _entry_bytes(model) -> float:
    """Bytes the EdgePatcher spends per (edge in a set, pair): the gathered writer delta and its bookkeeping."""
    return model.d_model * (torch.finfo(model.dtype).bits // 8 + 1) + 64


def _limits(model, pairs, memory_mb) -> dict:
    """range_effects' chunk limits for the EdgePatcher: member entries x pairs of a length group within memory_mb."""
    group = max(len(g.index) for g in pairs.groups())
    units = max(1, int(memory_mb * 2**20 // (group * _entry_bytes(model))))
    return {"max_units": units, "max_cells": max(units, 2**24)}


def _result(method, patcher, edge_set, effect, score, info, start) -> EdgeScores:
    """(N,) per-edge values of the sorted scope scattered into (W, R, T) tensors, NaN outside it."""
    graph, pairs = patcher.graph, patcher.pairs
    shape = (graph.n_writers, graph.n_readers, pairs.max_len)
    index = (edge_set.writer, edge_set.reader, edge_set.pos)
    out = []
    for values in (effect, score):
        tensor = torch.full(shape, torch.nan, dtype=torch.float64)
        tensor[index] = values.double()
        out.append(tensor)
    info = {"metric": patcher.metric.name, **info, "edges": len(edge_set),
            "forward_passes": patcher.stats["forward_passes"], "clean_metric": float(patcher.base.mean()),
            "cost": joint_cost(patcher, pairs, start)}
    return EdgeScores(method, graph, out[0], out[1], len(pairs), None, info)
