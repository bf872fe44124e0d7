"""The false-negative diagnostic on edges: how large can an unverified edge's effect be?

After verifying the top of an edge ranking (:func:`atpstar.verify` of an EdgeScores), :func:`diagnose_edges`
patches random subsets of the *unverified* edges jointly (:class:`~atpstar.edges.patching.EdgePatcher`:
several edges into one reader add their writer deltas, edges into different readers patch
independently), optionally subtracts each subset's predicted effect (the sum of its members' edge
AtP* estimates), and turns the included-minus-excluded statistics into "with probability ≥ 1 − δ no
unverified edge has |c(e)| > θ". The statistics (:mod:`.bound`), the sampling loop and its checkpoint
(:mod:`.sampling`) and the result (:class:`~atpstar.diagnostics.diagnosis.EdgeDiagnosis`) are the node
diagnostic's own; only the units differ (docs/edges.md, docs/diagnostic.md).

Edges whose writer's noise write equals its clean write on every pair (at that position) have effect
exactly 0: they are left out of the subsets and of the union bound (``static``).
"""

from __future__ import annotations

import hashlib
import time

import torch
from torch import Tensor

from ..checkpoint import fingerprint, run_key
from ..edges.edgeset import EdgeSet
from ..edges.graph import READER_KINDS, EdgeGraph
from ..edges.patching import EdgePatcher
from ..edges.units import EdgeUnits
from ..metrics import resolve
from ..pairs import check_pairs
from .diagnosis import EdgeDiagnosis
from .sampling import BOUND, P, SAMPLES, check_options, store_key
from .subsets import Side, bound_unverified

__all__ = ["EdgeDiagnosis", "diagnose_edges"]


def diagnose_edges(model, pairs, verified, estimates=None, edges=None, samples: int = SAMPLES, p: float = P,
                   delta: float = 0.05, seed: int = 0, metric=None, graph: EdgeGraph | None = None, checkpoint=None,
                   progress: bool = True, bound: str = BOUND, batch_size: int | None = None,
                   memory_mb: float = 1024, checkpoint_every: float = 30.0) -> EdgeDiagnosis:
    """Bound the edge effects that edge verification may have missed.

    Args:
        model, pairs, metric: as for :func:`atpstar.edges.edge_acp`.
        verified: a :class:`~atpstar.verification.Verification` of edges (the edges its ranking scored are the
            universe, its ``edges`` the verified ones; it must belong to this model, these pairs and this
            metric), or the verified edges themselves (names, an edge table with writer, reader, pos, an
            EdgeSet; None or empty: nothing verified), the universe then being every edge of the graph.
        estimates: optional :class:`~atpstar.edges.EdgeScores` (e.g. :func:`atpstar.edges.atp`): each
            subset's predicted effect, the sum of its members' signed mean estimates, is subtracted.
        edges: restrict the universe to these edges (an EdgeSet, names or an edge table), e.g. the edges
            into a few readers; verified edges among them are left out.
        samples, p, delta, seed, checkpoint, bound, batch_size: as for :func:`atpstar.diagnose`, with
            edges as the units (each edge in a subset with probability ``p``).
        graph: the :class:`~atpstar.edges.EdgeGraph` (default: the verification's, else ``EdgeGraph.of(model)``).

    Returns:
        :class:`~atpstar.diagnostics.diagnosis.EdgeDiagnosis`: ``theta``, ``theta_at(δ)``, ``prob_exceeds(θ)``,
        ``suspects`` (edge names, writer, reader, pos, effect, se, upper, ...), ``statement``, ``cost``,
        ``to_dict()`` and ``rebound(more_verified)``.
    """
    if getattr(verified, "unit_kind", "edge") != "edge":
        raise TypeError(f"verified is a {type(verified).__name__} of {verified.unit_kind}s, not of edges: bound what a "
                        "node verification left with atpstar.diagnose, or pass an edge verification or edges")
    start = time.perf_counter()
    check_options(samples, p, delta, bound)
    check_pairs(pairs)
    metric = resolve(metric, pairs)
    n_pos = pairs.max_len
    graph = graph or getattr(verified, "graph", None) or EdgeGraph.of(model)
    _check_estimates(estimates, graph, n_pos)
    kind = EdgeUnits(model, pairs, graph)
    universe, done = _universe(model, pairs, verified, kind, metric)
    if edges is not None:
        universe = universe.take(torch.isin(kind.ids(universe), kind.ids(kind.parse(edges))))
    side = Side("edge", universe, done, ids=kind.ids,
                patcher=lambda left: EdgePatcher(model, pairs, metric, graph, batch_size, memory_mb),
                moving=lambda patcher, left: ~patcher.static(left),
                gather=lambda units: estimates.effect[units.writer, units.reader, units.pos].double().nan_to_num(),
                key=lambda units, p, seed: _key(model, pairs, graph, units, metric, p, seed), scope=" in the universe")
    found = bound_unverified(side, pairs, estimates, samples, p, delta, seed, checkpoint, progress, bound, memory_mb,
                             checkpoint_every, start)
    readers = sorted({int(k) for k in graph.reader_kind[universe.reader].unique()})
    return EdgeDiagnosis(**found, kinds=[READER_KINDS[k] for k in readers], graph=graph)


def _check_estimates(estimates, graph: EdgeGraph, n_pos: int) -> None:
    if estimates is None:
        return
    effect = getattr(estimates, "effect", None)
    if not isinstance(effect, Tensor) or not hasattr(estimates, "graph"):
        got = type(estimates).__name__
        hint = (" (node estimates: atpstar.atp gives one number per node, not per edge)"
                if isinstance(effect, dict) else "")
        raise TypeError(f"estimates must be an EdgeScores, e.g. atpstar.edges.atp(model, pairs), got {got}{hint}")
    if tuple(effect.shape) != (graph.n_writers, graph.n_readers, n_pos):
        raise ValueError(f"edge estimates have shape {tuple(effect.shape)}, but this graph and these prompts have "
                         f"({graph.n_writers}, {graph.n_readers}, {n_pos}) (writers, readers, positions): compute "
                         "them on the same model, graph and pairs")


def _universe(model, pairs, verified, kind: EdgeUnits, metric) -> tuple[EdgeSet, EdgeSet]:
    """(every edge the bound is about, the verified ones)."""
    if hasattr(verified, "edges") and hasattr(verified, "effect") and isinstance(getattr(verified, "edges"), EdgeSet):
        key = getattr(verified, "key", None)
        if key is not None and key != run_key(model, pairs, metric):
            raise ValueError("the edge verification belongs to a different run (another model, prompt pairs or "
                             "metric): diagnose with the model, pairs and metric it was verified on")
        ranking = getattr(verified, "ranking", None)
        universe = kind.universe() if ranking is None else ranking
        kind.check(universe)
        return universe, verified.edges
    universe = kind.universe()
    empty = verified is None or (hasattr(verified, "__len__") and len(verified) == 0)
    done = universe.take(slice(0, 0)) if empty else kind.parse(verified)
    return universe, done


def _key(model, pairs, graph: EdgeGraph, edges: EdgeSet, metric, p: float, seed: int) -> str:
    digest = hashlib.sha256(fingerprint(model, pairs, None, metric).encode())
    digest.update(f"|per_head={graph.per_head}|".encode())
    for tensor in (edges.writer, edges.reader, edges.pos):
        digest.update(tensor.numpy().tobytes())
        digest.update(b"|")
    return store_key(digest.hexdigest(), p, seed, "edge-diagnostic")
