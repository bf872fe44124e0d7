"""The smallest top-n circuit of a ranking whose faithfulness reaches a threshold (0.8, 0.9).

Start from the curve's grid: the first grid point with f ≥ τ and the one before it bound n. Then
search between them, 8 evenly spaced n per batched evaluation, keeping the smallest n that reaches
τ and the largest below it that does not, until they are adjacent. Faithfulness is not monotone in
n in general, so this is the smallest n found by that search, not a proof that no smaller n exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..edges.graph import EdgeGraph
from .curve import MIB_GRID, Curve, curve, mib_scores
from .evaluate import References
from .prune import top_n

__all__ = ["Smallest", "smallest"]


@dataclass
class Smallest:
    threshold: float
    n: int | None
    """Edges asked for (top n of the ranking), None when no circuit of the grid reaches the threshold."""
    kept: int | None
    """Edges of that circuit after pruning."""
    f: float | None
    evaluations: int
    """Circuits evaluated by the search (besides the grid)."""

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "n": self.n, "kept": self.kept, "f": self.f, "evaluations": self.evaluations}


def smallest(model, pairs, scores, thresholds=(0.8, 0.9), absolute: bool = True, metric=None,
             graph: EdgeGraph | None = None, grid_curve: Curve | None = None, per_round: int = 8) -> list[Smallest]:
    """For each threshold τ, the smallest top-n circuit (pruned) of the ranking with f ≥ τ."""
    graph = EdgeGraph.resolve(model, graph or getattr(scores, "graph", None))
    values = mib_scores(scores, pairs)
    base = grid_curve or curve(model, pairs, values, absolute, MIB_GRID, metric, graph)
    refs = References(model, pairs, metric, graph)  # the clean and noise runs, once for every round
    out = []
    for tau in thresholds:
        reached = [i for i, f in enumerate(base.f) if f >= tau]
        if not reached:
            out.append(Smallest(tau, None, None, None, 0))
            continue
        i = reached[0]
        lo, hi = (base.requested[i - 1] if i else 0), base.requested[i]
        best = (hi, base.kept[i], base.f[i])
        evaluations = 0
        while hi - lo > 1:
            candidates = sorted(set(torch.linspace(lo, hi, per_round + 2).round().long().tolist()[1:-1]) - {lo, hi})
            circuits = torch.stack([top_n(graph, values, n, absolute) for n in candidates])
            f = refs.evaluate(circuits).f.tolist()
            evaluations += len(candidates)
            ok = [j for j, v in enumerate(f) if v >= tau]
            if ok:
                j = ok[0]
                hi, best = candidates[j], (candidates[j], int(circuits[j].sum()), f[j])
                lo = candidates[j - 1] if j else lo
            else:
                lo = candidates[-1]
        out.append(Smallest(tau, best[0], best[1], best[2], evaluations))
    return out
