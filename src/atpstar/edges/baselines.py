"""The paper's joint-patching baselines on edges (SPEC.md §8, with edges as the units of §11).

Subsampling, Blocks and Hierarchical with the node estimators' own arithmetic
(:func:`~atpstar.methods.subsampling.subsample`, :func:`~atpstar.methods.blocks.block_means`,
:func:`~atpstar.methods.hierarchical.descend`), with edges in place of nodes and exact joint edge
patches (:class:`~.patching.EdgePatcher`: several edges into one reader add their deltas, edges into
different readers patch independently) in place of the JointPatcher. The options and what they mean
are the node versions' (SPEC §8, docs/study.md: ``p``, ``samples``, ``size``, ``order``, ``branching``,
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
from ..methods.common import check_positive_int, joint_cost
from ..methods.hierarchical import check_threshold, descend
from ..methods.subsampling import check_p, chunk_size, subsample
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
                                                 threshold, relative, bar, presence=_presence(pairs, edge_set.pos),
                                                 **_limits(model, pairs, memory_mb))
    info = {"branching": branching, "threshold": threshold, "relative": relative, "groups": groups,
            "leaves": int(leaf.sum())}
    return _result("edge hierarchical", patcher, edge_set, effect, score, info, start)


EDGE_BASELINES = {"subsampling": subsampling, "blocks": blocks, "hierarchical": hierarchical}
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


def _setup(model, pairs, edges, metric, graph, batch_size, memory_mb, order):
    """(EdgePatcher, the scope sorted by :func:`sort_key` without duplicates, its keys)."""
    check_pairs(pairs)
    graph, n_pos = graph or EdgeGraph.of(model), pairs.max_len
    edge_set = EdgeSet.every(graph, n_pos) if edges is None else EdgeSet.parse(graph, edges, n_pos)
    patcher = EdgePatcher(model, pairs, metric, graph, batch_size, memory_mb)
    key, index = torch.sort(sort_key(graph, edge_set, n_pos, order), stable=True)
    keep = torch.ones(len(key), dtype=torch.bool)
    keep[1:] = key[1:] != key[:-1]
    return patcher, edge_set.take(index[keep]), key[keep]


def _presence(pairs, pos: Tensor) -> Tensor:
    """(N,) fraction of the pairs whose (right-aligned) prompts have each edge's position."""
    count = torch.zeros(len(pos), dtype=torch.float64)
    for group in pairs.groups():
        count += len(group.index) * (pos >= group.offset).double()
    return count / len(pairs)


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
