"""Nodes as units (:class:`atpstar.units.Units`): the node kind bound to a run, for verification and
everything else written once over units.

A node's id is unique within the run's dimensions (layers, the largest unit count of any kind,
aligned positions), the key of verification checkpoints.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from ..nodes import NodeSet
from ..ranking import Ranking, as_ranking, check_unique
from ..types import ALL_KINDS
from ..units import KINDS
from .node_patcher import ChunkPatcher


class NodeUnits:
    """The nodes of one run (model, prompt pairs)."""

    name, plural = "node", "nodes"

    def __init__(self, model, pairs):
        self.model, self.pairs = model, pairs
        self.dims = (model.n_layers, max(model.units(k) for k in ALL_KINDS), pairs.max_len)

    @classmethod
    def bind(cls, model, pairs, ranking=None) -> "NodeUnits":
        return cls(model, pairs)

    def universe(self) -> NodeSet:
        return NodeSet.every(self.model, "all", self.pairs.max_len)

    def ids(self, units: NodeSet) -> Tensor:
        return units.ids(self.dims)

    def from_ids(self, ids: Tensor) -> NodeSet:
        n_layers, n_units, n_pos = self.dims
        ids = torch.as_tensor(ids, dtype=torch.long)
        pos, rest = ids % n_pos, ids // n_pos
        unit, rest = rest % n_units, rest // n_units
        return NodeSet(rest // n_layers, rest % n_layers, unit, pos)

    def names(self, units: NodeSet) -> list[str]:
        """Each node's name (``Node.name``: ``L3.q.H5@12``), built column-wise."""
        return _names(units).tolist()

    def parse(self, items) -> NodeSet:
        return NodeSet.parse(self.model, items, self.pairs.max_len)

    def check(self, units: NodeSet) -> None:
        units.check(self.model, self.pairs.max_len)

    def presence(self, units: NodeSet) -> Tensor:
        return self.pairs.presence(units.pos)

    def ranking(self, obj) -> Ranking:
        """A Scores (ranked by score; NaN-scored nodes left out), a node table, node names or a NodeSet."""
        ranked = as_ranking(obj)
        if ranked.from_scores:  # NaN in a Scores: not computed, or a position no prompt has
            ranked = ranked.take(ranked.score.isfinite())
        if len(ranked) == 0:
            raise ValueError("empty ranking: pass a Scores, a node table or node names with at least one node")
        self.check(ranked.units)
        check_unique(ranked.units, self.ids(ranked.units), "the ranking")
        return ranked

    def patcher(self, metric, units: NodeSet, batch_size: int | None, memory_mb: float) -> ChunkPatcher:
        return ChunkPatcher(self.model, self.pairs, metric, units.kinds, batch_size, memory_mb)

    def store_key(self, run_key: str) -> str:
        return run_key  # node checkpoints predate the other unit kinds: their key is the run's

    def verified_frame(self, v) -> pd.DataFrame:
        """One row per verified node, in rank order: kind, layer, unit, pos, name, rank (0-based), effect (exact
        mean), mean_abs, score (= |effect|), estimate and estimate_score (the ranking's), cost (forward-pass
        equivalents per pair spent on it), before_stop (rank < stop_index)."""
        nodes = v.nodes
        kind = pd.Series([k.value for k in ALL_KINDS])[nodes.kind.numpy()].to_numpy()
        layer, unit, pos = (t.numpy() for t in (nodes.layer, nodes.unit, nodes.pos))
        return pd.DataFrame({
            "kind": kind, "layer": layer, "unit": unit, "pos": pos, "name": _names(nodes), "rank": v.rank.numpy(),
            "effect": v.effect.numpy(), "mean_abs": v.per_pair.abs().nanmean(1).numpy(),
            "score": v.effect.abs().numpy(), "estimate": v.estimate.numpy(), "estimate_score": v.score.numpy(),
            "cost": (v.node_cost / max(v.per_pair.shape[1], 1)).numpy(),
            "before_stop": v.rank.numpy() < v.stop_index,
        })


def _names(nodes: NodeSet) -> pd.Series:
    """``Node.name`` of every node (``L3.q.H5@12``), without a Python loop over them."""
    codes = nodes.kind.numpy()
    kind = pd.Series([k.value for k in ALL_KINDS])[codes].to_numpy()
    letter = pd.Series([k.unit_letter for k in ALL_KINDS])[codes].to_numpy()
    layer, unit, pos = (pd.Series(t.numpy()).astype(str) for t in (nodes.layer, nodes.unit, nodes.pos))
    return layer.radd("L") + "." + kind + "." + letter + unit + "@" + pos


KINDS["node"] = NodeUnits.bind
