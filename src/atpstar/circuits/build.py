"""Circuit rankings that use what atpstar has and the field's estimators lack: exact verification.

A circuit method here returns :class:`CircuitScores`: (W, R) position-free edge scores in the MIB
convention (an edge's score is minus its effect on the metric: the top of the signed ranking are the
edges whose patching hurts the behaviour most), which :func:`atpstar.circuits.mib`,
:func:`~atpstar.circuits.curves` and :func:`~atpstar.circuits.smallest` take as they are, and the
cost in forward-pass equivalents.

- :func:`exact_effects`: the exact effect of each position-free edge ``u -> v``: the clean run with
  reader v reading writer u's noise write at **every** position at once (one joint patch of the
  edge's per-position edges, :class:`~atpstar.edges.EdgePatcher`), mean over pairs. This is what the
  MIB benchmark calls exact edge patching; over every edge it is the oracle ranking of this graph.
- :func:`verified`: an estimate's ranking (AtP*, EAP-IG, ...) whose top ``top`` edges by
  ``|score|`` are replaced by their exact effects, so that the edges the estimate got wrong move to
  where they belong (up or out of the top), at one partial forward pass per verified edge and pair.
  With ``top`` = every edge it is :func:`exact_effects`' ranking, whatever the estimate.
- :func:`signed_by`: one ranking's magnitudes with another's signs (e.g. AtP*'s magnitudes, whose
  QK fix and GradDrop make the absolute ranking, the CMD curve, more faithful, with EAP-IG-inputs'
  signs, which decide which edges the signed ranking, the CPR curve, keeps first).
- :func:`mean_magnitude`: the mean of two rankings' magnitudes with the second's signs (e.g. circuit
  IG's and EAP-IG-inputs': two integrated gradients between the same noise and clean runs along
  different paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..cost import Cost
from ..edges.edgeset import EdgeSet
from ..edges.graph import EdgeGraph
from ..edges.patching import EdgePatcher
from .curve import mib_scores

__all__ = ["CircuitScores", "exact", "exact_effects", "mean_magnitude", "signed_by", "verified"]


@dataclass
class CircuitScores:
    """(W, R) MIB-convention scores of a circuit method and what they cost."""

    method: str
    graph: EdgeGraph
    scores: Tensor
    """(W, R) float64: minus the effect on the metric, NaN where the edge does not exist."""
    cost: Cost
    """Forward (and backward) passes spent, the estimate's included; ``cost.per_pair(ratio)`` per pair."""
    info: dict = field(default_factory=dict)


def exact_effects(model, pairs, edges: Tensor | None = None, metric=None, graph: EdgeGraph | None = None,
                  batch_size: int | None = None, patcher: EdgePatcher | None = None) -> tuple[Tensor, Cost]:
    """((K, P) float64 exact effect per pair of patching each position-free edge at every position, Cost:
    the patcher's whole work, its captures of the clean and noise writes included).

    ``edges``: (K, 2) long (writer, reader) indices (None: every edge of the graph, row-major order).
    An edge whose writer does not move on a pair (same write on both prompts) has effect 0 there."""
    patcher = patcher or EdgePatcher(model, pairs, metric, graph, batch_size)
    graph = patcher.graph
    if edges is None:
        edges = graph.valid.nonzero()
    edges = torch.as_tensor(edges, dtype=torch.long).reshape(-1, 2)
    bad = ~graph.valid[edges[:, 0], edges[:, 1]] if len(edges) else torch.zeros(0, dtype=torch.bool)
    if bad.any():
        w, r = edges[int(bad.nonzero()[0])].tolist()
        raise ValueError(f"edge {graph.writer_names[w]} -> {graph.reader_names[r]} does not exist: "
                         f"{graph.why_invalid(w, r)}; pass (writer, reader) index pairs of existing edges")
    n_pos, k = pairs.max_len, len(edges)
    pos = torch.arange(n_pos).repeat(k)
    flat = EdgeSet(edges[:, 0].repeat_interleave(n_pos), edges[:, 1].repeat_interleave(n_pos), pos)
    sets = torch.arange(k * n_pos).view(k, n_pos)
    values = patcher.effects(flat, list(sets)) if k else torch.zeros(0, len(pairs), dtype=torch.float64)
    stats = patcher.stats
    return values, Cost(forward=stats["forward_equivalents"], pairs=len(pairs), seconds=stats["seconds"])


def exact(model, pairs, metric=None, graph: EdgeGraph | None = None, batch_size: int | None = None) -> CircuitScores:
    """The oracle ranking: every position-free edge's exact effect (one patch per edge and pair)."""
    patcher = EdgePatcher(model, pairs, metric, graph, batch_size)
    values, cost = exact_effects(model, pairs, None, patcher=patcher)
    scores = _filled(patcher.graph, patcher.graph.valid.nonzero(), -values.mean(1))
    return CircuitScores("exact", patcher.graph, scores, cost, {"verified": len(values)})


def verified(model, pairs, scores, top: int, metric=None, batch_size: int | None = None,
             name: str | None = None) -> CircuitScores:
    """``scores`` (an :class:`~atpstar.edges.EdgeScores` or a :class:`CircuitScores`) with its top ``top``
    position-free edges by ``|score|`` re-scored by their exact effects (:func:`exact_effects`)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top must be a number of edges >= 0 (how many of the ranking's best edges to verify), got {top!r}")
    graph = scores.graph
    base = scores.scores if isinstance(scores, CircuitScores) else mib_scores(scores, pairs)
    base_cost = scores.cost if isinstance(scores, CircuitScores) else Cost.of(scores)
    values = base.double().masked_fill(~graph.valid, torch.nan)
    magnitude = values.abs().nan_to_num(nan=-1.0).masked_fill(~graph.valid, -torch.inf).flatten()
    order = torch.sort(magnitude, descending=True, stable=True).indices[:min(top, graph.n_edges())]
    chosen = torch.stack([order // graph.n_readers, order % graph.n_readers], 1)
    patcher = EdgePatcher(model, pairs, metric, graph, batch_size)
    exact_values, cost = exact_effects(model, pairs, chosen, patcher=patcher)
    out = _filled(graph, chosen, -exact_values.mean(1), values)
    method = name or f"verified top {len(chosen)} of {getattr(scores, 'method', 'scores')}"
    info = {"verified": len(chosen), "estimate": getattr(scores, "method", None), "verify_cost": cost}
    return CircuitScores(method, graph, out, base_cost + cost, info)


def _filled(graph: EdgeGraph, edges: Tensor, values: Tensor, base: Tensor | None = None) -> Tensor:
    out = torch.full(graph.shape, torch.nan, dtype=torch.float64) if base is None else base.clone()
    out[edges[:, 0], edges[:, 1]] = values.double()
    return out


def signed_by(magnitude: CircuitScores, sign: CircuitScores, name: str | None = None) -> CircuitScores:
    """|``magnitude``'s scores| with the sign of ``sign``'s scores (0 where that sign is 0); costs add up."""
    _one_graph("signed_by", magnitude, sign)
    scores = magnitude.scores.double().abs() * sign.scores.double().sign()
    method = name or f"{magnitude.method} with the signs of {sign.method}"
    return CircuitScores(method, magnitude.graph, scores, magnitude.cost + sign.cost,
                         {"magnitude": magnitude.method, "sign": sign.method})


def mean_magnitude(a: CircuitScores, b: CircuitScores, name: str | None = None) -> CircuitScores:
    """(|``a``| + |``b``|) / 2 per edge (both in the metric's units) with ``b``'s signs (:func:`signed_by`); costs
    add up."""
    _one_graph("mean_magnitude", a, b)
    mean = CircuitScores(f"mean |score| of {a.method} and {b.method}", a.graph,
                         (a.scores.double().abs() + b.scores.double().abs()) / 2, a.cost)
    return signed_by(mean, b, name)


def _one_graph(what: str, a: CircuitScores, b: CircuitScores) -> None:
    if a.graph.shape != b.graph.shape:
        raise ValueError(f"{what} needs scores of one graph: {a.method} is {a.graph.shape}, {b.method} is "
                         f"{b.graph.shape}")
