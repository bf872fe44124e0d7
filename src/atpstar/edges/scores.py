"""The result of every edge method: per-edge effects and ranking scores as (W, R, T) tensors.

``effect[w, r, t]`` is the edge ``writer w -> reader r`` at aligned position ``t`` (see
:mod:`atpstar.pairs`). ``NaN`` marks an edge that does not exist (``graph.valid`` is False), one that
was not computed (an edge subset was asked for) or a position no pair has. Rankings, tables and
groupings are tensor operations: never a Python object per edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from ..scores import check_top
from .edgeset import EdgeSet
from .graph import READER_KINDS, WRITER_KINDS, EdgeGraph, K, Q, V

COLUMNS = ("name", "writer", "reader", "pos", "writer_layer", "writer_kind", "writer_unit", "reader_layer",
           "reader_kind", "reader_unit", "score", "effect")
GROUPINGS = ("positions", "heads")


@dataclass
class EdgeScores:
    unit_kind: ClassVar[str] = "edge"
    """The unit kind (:mod:`atpstar.units`)."""

    method: str
    graph: EdgeGraph
    effect: Tensor
    """(W, R, T) signed mean over pairs of the (estimated) effect I(u -> v)."""
    score: Tensor
    """(W, R, T) ranking score: mean over pairs of |effect| (the method's score terms, e.g. GradDrop's)."""
    n_pairs: int
    per_pair: Tensor | None = None
    """(P, W, R, T) per-pair effects, when asked for (``per_pair=True``)."""
    info: dict = field(default_factory=dict)
    """Cost accounting (``cost``: a :class:`~atpstar.cost.Cost`), options and the clean metric."""

    @property
    def n_pos(self) -> int:
        return self.effect.shape[-1]

    def __repr__(self) -> str:
        return (f"EdgeScores({self.method}, {self.n_pairs} pairs, {int(self.score.isfinite().sum())} edges, "
                f"{self.graph.n_writers} writers x {self.graph.n_readers} readers x {self.n_pos} positions)")

    # --- rankings ---------------------------------------------------------------------------------
    def ranked_ids(self, k: int | None = None) -> Tensor:
        """Flat (W*R*T) indices of the computed edges by decreasing score (ties: lower index first)."""
        if k is not None and check_top(k) == 0:
            return torch.zeros(0, dtype=torch.long)
        flat = self.score.flatten()
        ok = flat.isfinite().nonzero().flatten()
        values = flat[ok]
        if k is None or k >= len(ok):
            order = torch.sort(values, descending=True, stable=True).indices
        else:
            kth = values[torch.topk(values, k).indices].min()  # topk picks among ties at random: keep the
            above = (values > kth).nonzero().flatten()  # lower indices of the k-th value, as the full sort does
            order = torch.cat([above, (values == kth).nonzero().flatten()[: k - len(above)]])
            order = order[torch.sort(values[order], descending=True, stable=True).indices]
        return ok[order]

    def edges(self, k: int | None = None) -> EdgeSet:
        """The top ``k`` (all when None) computed edges as an :class:`EdgeSet`, best first."""
        return EdgeSet.from_ids(self.graph, self.ranked_ids(k), self.n_pos)

    def top(self, k: int = 20):
        """The ``k`` best edges as a table (see :meth:`to_frame`); ``top(0)`` is an empty table."""
        return self.to_frame(top=check_top(k))

    def to_frame(self, top: int | None = None):
        """pandas DataFrame, one row per computed edge, by decreasing score: name, writer, reader, pos,
        writer_layer, writer_kind ("embed"|"head"|"attn"|"mlp"), writer_unit (head or -1), reader_layer,
        reader_kind ("q"|"k"|"v"|"mlp"|"logits"), reader_unit (head, kv head or -1), score, effect."""
        ids = self.ranked_ids(None if top is None else check_top(top, "top"))
        edges = EdgeSet.from_ids(self.graph, ids, self.n_pos)
        return edge_frame(self.graph, edges, self.score.flatten()[ids], self.effect.flatten()[ids])

    # --- groupings --------------------------------------------------------------------------------
    def group(self, *by: str):
        """Coarser edges as a table (same columns as :meth:`to_frame`), sorted by score.

        ``"positions"``: summed over positions (rows with ``pos == -1``, names without ``@t``).
        ``"heads"``: each reader head's q, k and v inputs merged into one reader ``L{ℓ}.head.G{g}``
        (the key-value head g with every query head that reads it: one whole head without GQA).
        Effects are summed (signed) over the grouped edges; the score is |summed effect| averaged over
        pairs when per-pair effects are kept (``per_pair=True``), else |summed mean effect|.
        """
        bad = set(by) - set(GROUPINGS)
        if not by or bad:
            raise ValueError(f"group by {sorted(bad) or 'nothing'}: choose from {GROUPINGS}, e.g. .group('positions')")
        values = self.per_pair if self.per_pair is not None else self.effect[None]
        present = values.isfinite()
        values = values.nan_to_num()
        graph = self.graph
        if "heads" in by:
            graph, index = _head_readers(self.graph)
            shape = (*values.shape[:2], graph.n_readers, values.shape[-1])
            values = values.new_zeros(shape).index_add_(2, index, values)
            present = torch.zeros(shape, dtype=torch.long).index_add_(2, index, present.long()) > 0
        if "positions" in by:
            values, present = values.sum(-1, keepdim=True), present.any(-1, keepdim=True)
        total = values.where(present, torch.nan)
        effect, score = total.nanmean(0), total.abs().nanmean(0)
        n_pos = effect.shape[-1]
        ids = EdgeScores("grouped", graph, effect, score, self.n_pairs).ranked_ids()
        edges = EdgeSet.from_ids(graph, ids, n_pos)
        if "positions" in by:
            edges = EdgeSet(edges.writer, edges.reader, torch.full_like(edges.pos, -1))
        return edge_frame(graph, edges, score.flatten()[ids], effect.flatten()[ids])


def edge_frame(graph: EdgeGraph, edges: EdgeSet, score: Tensor, effect: Tensor):
    """The tidy table of :meth:`EdgeScores.to_frame` for given edges and values (``pos == -1``: all positions)."""
    import numpy as np
    import pandas as pd

    w, r, p = (t.numpy() for t in (edges.writer, edges.reader, edges.pos))
    writer = np.asarray(graph.writer_names, dtype=object)[w]
    reader = np.asarray(graph.reader_names, dtype=object)[r]
    at = np.where(p >= 0, "@" + p.astype(str).astype(object), "")
    return pd.DataFrame({
        "name": writer + at + " -> " + reader + at,
        "writer": writer, "reader": reader, "pos": p,
        "writer_layer": graph.writer_layer.numpy()[w],
        "writer_kind": np.asarray(WRITER_KINDS, dtype=object)[graph.writer_kind.numpy()[w]],
        "writer_unit": graph.writer_unit.numpy()[w],
        "reader_layer": graph.reader_layer.numpy()[r],
        "reader_kind": np.asarray(READER_KINDS + ("head",), dtype=object)[graph.reader_kind.numpy()[r]],
        "reader_unit": graph.reader_unit.numpy()[r],
        "score": score.double().numpy(), "effect": effect.double().numpy(),
    }, columns=list(COLUMNS))


HEAD_READER = len(READER_KINDS)
"""Reader-kind index of a whole-head reader in grouped tables (``reader_kind == "head"``)."""


def _head_readers(graph: EdgeGraph) -> tuple[EdgeGraph, Tensor]:
    """A graph whose q/k/v readers are merged per (layer, kv head), and the map old reader -> new reader."""
    group_size = graph.n_heads // graph.n_kv_heads
    kind, unit = graph.reader_kind, graph.reader_unit
    attn = (kind == Q) | (kind == K) | (kind == V)
    kv = torch.where(kind == Q, unit // group_size, unit)
    key = torch.where(attn, graph.reader_layer * (graph.n_kv_heads + 1) + kv,
                      graph.reader_layer * (graph.n_kv_heads + 1) + graph.n_kv_heads)
    new_key, index = torch.unique(key, return_inverse=True)  # sorted: layer by layer, heads then the MLP
    first = torch.full((len(new_key),), len(kind)).scatter_reduce(0, index, torch.arange(len(kind)), "amin")
    is_head = attn[first]
    names = tuple(f"L{int(graph.reader_layer[i])}.head.G{int(kv[i])}" if h else graph.reader_names[i]
                  for i, h in zip(first.tolist(), is_head.tolist()))
    new_kind = torch.where(is_head, HEAD_READER, kind[first])
    valid = torch.zeros(graph.n_writers, len(new_key), dtype=torch.long).index_add_(1, index, graph.valid.long()) > 0
    grouped = EdgeGraph(graph.writer_names, graph.writer_layer, graph.writer_kind, graph.writer_unit, names,
                        graph.reader_layer[first], new_kind, torch.where(is_head, kv[first], -1), valid,
                        graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.per_head, graph.parallel_residual)
    return grouped, index
