"""Edges as units (:class:`atpstar.units.Units`): the edge kind bound to a run, for verification and
everything else written once over units.

An edge's id is its flat index into the (writers, readers, positions) grid of its graph, the layout
of :class:`~atpstar.edges.EdgeScores`.
"""

from __future__ import annotations

import hashlib

from torch import Tensor

from ..ranking import Ranking, check_unique, plain
from ..units import KINDS
from .edgeset import EdgeSet
from .graph import EdgeGraph
from .patching import EdgePatcher
from .scores import edge_frame


class EdgeUnits:
    """The edges of one run (model, prompt pairs) in one :class:`EdgeGraph`."""

    name, plural = "edge", "edges"

    def __init__(self, model, pairs, graph: EdgeGraph | None = None):
        self.model, self.pairs = model, pairs
        self.graph, self.n_pos = graph or EdgeGraph.of(model), pairs.max_len

    @classmethod
    def bind(cls, model, pairs, ranking=None) -> "EdgeUnits":
        """The edges of ``ranking``'s graph (an EdgeScores'; else the model's default graph)."""
        graph = getattr(ranking, "graph", None)
        n_pos = getattr(ranking, "n_pos", pairs.max_len)
        if n_pos != pairs.max_len:
            raise ValueError(f"the edge scores cover {n_pos} positions but these prompt pairs have {pairs.max_len}: "
                             "verify on the prompt pairs the scores were computed on")
        return cls(model, pairs, graph if isinstance(graph, EdgeGraph) else None)

    def universe(self) -> EdgeSet:
        return EdgeSet.every(self.graph, self.n_pos)

    def ids(self, units: EdgeSet) -> Tensor:
        return units.ids(self.graph, self.n_pos)

    def from_ids(self, ids: Tensor) -> EdgeSet:
        return EdgeSet.from_ids(self.graph, ids, self.n_pos)

    def names(self, units: EdgeSet) -> list[str]:
        return units.names(self.graph)

    def parse(self, items) -> EdgeSet:
        return EdgeSet.parse(self.graph, items, self.n_pos)

    def check(self, units: EdgeSet) -> None:
        units.check(self.graph)
        units.check_positions(self.graph, self.n_pos)

    def presence(self, units: EdgeSet) -> Tensor:
        return self.pairs.presence(units.pos)

    def ranking(self, obj) -> Ranking:
        """An EdgeScores (ranked by score; edges it did not score left out), or edges in ranked order (an
        EdgeSet, edge names, a table with writer, reader, pos)."""
        if hasattr(obj, "ranked_ids") and isinstance(getattr(obj, "score", None), Tensor):
            ids = obj.ranked_ids()
            ranked = Ranking(self.from_ids(ids), obj.score.flatten()[ids].double(), obj.effect.flatten()[ids].double(),
                             from_scores=True)
        else:
            ranked = plain(self.parse(obj))
        if len(ranked) == 0:
            raise ValueError("empty edge ranking: pass an EdgeScores with at least one scored edge, or edges")
        check_unique(ranked.units, self.ids(ranked.units), "the ranking", self.names, "edge")
        return ranked

    def patcher(self, metric, units: EdgeSet, batch_size: int | None, memory_mb: float) -> EdgePatcher:
        return EdgePatcher(self.model, self.pairs, metric, self.graph, batch_size, memory_mb)

    def store_key(self, run_key: str) -> str:
        """The run's key and the graph's shape: edge ids index its (writers, readers, positions) grid."""
        g = self.graph
        shape = f"|edges|{g.n_writers}x{g.n_readers}x{self.n_pos}|per_head={g.per_head}"
        return hashlib.sha256((run_key + shape).encode()).hexdigest()

    def verified_frame(self, v):
        """rank (1-based), the tidy edge columns (name, writer, reader, pos, ...), score and effect (the
        ranking's) and ``effect_exact`` (the exact mean effect)."""
        frame = edge_frame(self.graph, v.nodes, v.score, v.estimate)
        frame.insert(0, "rank", range(1, len(frame) + 1))
        frame["effect_exact"] = v.effect.numpy()
        return frame


KINDS["edge"] = EdgeUnits.bind
