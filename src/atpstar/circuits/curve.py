"""Faithfulness curves and the MIB benchmark's circuit scores, CPR and CMD.

As the MIB circuit-localization track computes them: circuits of the top ``int(p · E)`` edges
(E = every edge of the graph) at the grid p = 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 %, each
pruned to the edges on a path from the input to the logits (:mod:`.prune`), faithfulness of each
(metric averaged over pairs before the ratio), then trapezoids over the grid's percentages on a
linear axis (MIB's code computes log-scaled x values but does not use them):

- **CPR** (higher is better) = area under f, the edges ranked by their **signed** score;
- **CMD** (lower is better) = area under |1 − f|, the edges ranked by their **absolute** score.

MIB's scores are importances for the loss −metric: an edge's score is minus its (estimated) effect
on the metric, so the top of the signed ranking are the edges whose patching hurts the behaviour
most. :func:`mib_scores` turns atpstar's :class:`~atpstar.edges.EdgeScores` (effects per position,
signed as the change of the metric) into that convention, summed over positions as EAP-IG does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..edges.export import edge_values
from ..edges.graph import EdgeGraph
from .evaluate import Faithfulness, faithfulness
from .prune import top_n

MIB_GRID = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
"""The MIB benchmark's fractions of all edges."""

__all__ = ["MIB_GRID", "Curve", "MIBScores", "areas", "curve", "curves", "mib", "mib_scores"]


@dataclass
class Curve:
    """Faithfulness at each grid point of one ranking."""

    grid: tuple
    requested: list
    """Edges asked for at each point, ``int(p · E)``."""
    kept: list
    """Edges left after pruning."""
    f: list
    absolute: bool
    result: Faithfulness | None = None

    @property
    def area(self) -> float:
        """Area under f over the grid (MIB's CPR when the ranking is signed)."""
        return areas(self.grid, self.f)[0]

    @property
    def area_from_one(self) -> float:
        """Area under |1 − f| over the grid (MIB's CMD when the ranking is absolute)."""
        return areas(self.grid, self.f)[1]

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "requested": self.requested, "kept": self.kept, "f": self.f,
                "absolute": self.absolute, "area": self.area, "area_from_one": self.area_from_one}


def areas(grid, f) -> tuple[float, float]:
    """(area under f, area under |1 − f|): trapezoids over the grid's fractions on a linear axis."""
    if len(grid) != len(f) or len(grid) < 2:
        raise ValueError(f"a curve needs one faithfulness per grid point and at least two points, got {len(grid)} "
                         f"grid points and {len(f)} values")
    under = sum((b - a) * (fa + fb) / 2 for a, b, fa, fb in zip(grid, grid[1:], f, f[1:]))
    from_one = sum((b - a) * (abs(1 - fa) + abs(1 - fb)) / 2 for a, b, fa, fb in zip(grid, grid[1:], f, f[1:]))
    return float(under), float(from_one)


def mib_scores(scores, pairs=None, verified=None) -> Tensor:
    """(W, R) MIB-convention signed scores of an :class:`~atpstar.edges.EdgeScores`: minus the effect
    summed over positions (each aligned position weighted by the share of pairs that have it, so the
    sum is the mean over pairs of each pair's sum, as EAP-IG averages). A (W, R) tensor passes through.
    ``verified``: a table with ``name`` and ``effect_exact`` (a run's verified edges): their exact
    effects replace the estimates at those edges and positions before the sum."""
    if isinstance(scores, Tensor):
        return scores
    effect = scores.effect if verified is None else edge_values(scores, verified)
    weight = torch.ones(effect.shape[-1], dtype=torch.float64) if pairs is None else pairs.presence(torch.arange(effect.shape[-1]))
    total = (effect.double().nan_to_num() * weight).sum(-1)
    return (-total).masked_fill(~scores.graph.valid, torch.nan)


def curve(model, pairs, scores, absolute: bool, grid=MIB_GRID, metric=None, graph: EdgeGraph | None = None,
          pruned: bool = True, batch_size: int | None = None) -> Curve:
    """The faithfulness curve of a ranking: ``scores`` an EdgeScores or (W, R) MIB-convention scores."""
    return curves(model, pairs, scores, (absolute,), grid, metric, graph, pruned, batch_size)[0]


def curves(model, pairs, scores, absolutes=(False, True), grid=MIB_GRID, metric=None, graph: EdgeGraph | None = None,
           pruned: bool = True, batch_size: int | None = None) -> list[Curve]:
    """One curve per entry of ``absolutes`` (signed / absolute ranking), all circuits in one batched evaluation."""
    graph = EdgeGraph.resolve(model, graph or getattr(scores, "graph", None))
    values = mib_scores(scores, pairs)
    if tuple(values.shape) != graph.shape:
        raise ValueError(f"scores of shape {tuple(values.shape)} do not fit this model's edge graph {graph.shape} "
                         "(were they computed on another model, or another writer granularity?)")
    total = graph.n_edges()
    requested = [int(p * total) for p in grid]
    circuits = torch.stack([top_n(graph, values, n, a, pruned) for a in absolutes for n in requested])
    result = faithfulness(model, pairs, circuits, metric, graph, batch_size)
    f, kept, k = result.f.tolist(), [int(c.sum()) for c in circuits], len(grid)
    return [Curve(tuple(grid), requested, kept[i * k:(i + 1) * k], f[i * k:(i + 1) * k], a, result)
            for i, a in enumerate(absolutes)]


@dataclass
class MIBScores:
    """CPR (area under f of the signed ranking) and CMD (area under |1 − f| of the absolute ranking)."""

    cpr: float
    cmd: float
    signed: Curve
    absolute: Curve

    def to_dict(self) -> dict:
        return {"cpr": self.cpr, "cmd": self.cmd, "signed": self.signed.to_dict(), "absolute": self.absolute.to_dict()}


def mib(model, pairs, scores, grid=MIB_GRID, metric=None, graph: EdgeGraph | None = None,
        batch_size: int | None = None) -> MIBScores:
    """The MIB circuit track's CPR and CMD of a ranking (both curves in one batched evaluation)."""
    signed, absolute = curves(model, pairs, scores, (False, True), grid, metric, graph, True, batch_size)
    return MIBScores(signed.area, absolute.area_from_one, signed, absolute)
