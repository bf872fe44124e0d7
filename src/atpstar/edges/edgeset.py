"""Sets of edges as flat int64 tensors ``(writer, reader, pos)``, parsed and checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .graph import EdgeGraph

_NAME_PATTERN = r"^\s*(\S+?)@(\d+)\s*->\s*(\S+?)@(\d+)\s*$"
EXAMPLES = "'L3.head.H5@12 -> L7.k.G1@12', 'embed@4 -> L0.q.H2@4', 'L2.mlp@17 -> logits@17'"


@dataclass(frozen=True)
class EdgeSet:
    """N edges: ``writer`` and ``reader`` index :class:`EdgeGraph`'s writers/readers, ``pos`` is the
    aligned position (see :mod:`atpstar.pairs`) where the writer writes and the reader reads."""

    unit_kind: ClassVar[str] = "edge"
    """The unit kind (:mod:`atpstar.units`)."""

    writer: Tensor
    reader: Tensor
    pos: Tensor

    def __len__(self) -> int:
        return len(self.writer)

    def take(self, mask_or_index) -> "EdgeSet":
        return EdgeSet(self.writer[mask_or_index], self.reader[mask_or_index], self.pos[mask_or_index])

    def cat(self, other: "EdgeSet") -> "EdgeSet":
        return EdgeSet(*(torch.cat([a, b]) for a, b in zip(self._cols(), other._cols())))

    def _cols(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.writer, self.reader, self.pos

    def ids(self, graph: EdgeGraph, n_pos: int) -> Tensor:
        """(N,) int64 id of each edge, unique for a graph and ``n_pos`` positions: flat index into (W, R, T)."""
        return (self.writer * graph.n_readers + self.reader) * n_pos + self.pos

    @classmethod
    def from_ids(cls, graph: EdgeGraph, ids: Tensor, n_pos: int) -> "EdgeSet":
        """Inverse of :meth:`ids`."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        return cls(ids // (graph.n_readers * n_pos), ids // n_pos % graph.n_readers, ids % n_pos)

    def names(self, graph: EdgeGraph) -> list[str]:
        """Printable names ``"{writer}@{t} -> {reader}@{t}"``, vectorised."""
        import numpy as np

        w = np.asarray(graph.writer_names, dtype=object)[self.writer.numpy()]
        r = np.asarray(graph.reader_names, dtype=object)[self.reader.numpy()]
        p = self.pos.numpy().astype(str).astype(object)
        return list(w + "@" + p + " -> " + r + "@" + p)

    @classmethod
    def from_names(cls, graph: EdgeGraph, names) -> "EdgeSet":
        """Vectorised parse of edge names; a name that does not parse, names an unknown writer/reader,
        joins two positions, or an edge that does not exist is a ValueError naming it."""
        import numpy as np
        import pandas as pd

        if isinstance(names, str):
            raise TypeError(f"expected a collection of edge names, got the single edge name {names!r}: wrap it in a "
                            f"list, e.g. [{names!r}]")
        names = list(names)
        parts = pd.Series(names, dtype=object).astype(str).str.extract(_NAME_PATTERN)
        bad = parts[0].isna().to_numpy()
        if bad.any():
            raise ValueError(f"cannot parse edge name {names[int(np.flatnonzero(bad)[0])]!r} ({int(bad.sum())} bad "
                             f"names); expected '{{writer}}@{{t}} -> {{reader}}@{{t}}', e.g. {EXAMPLES}")
        moved = (parts[1] != parts[3]).to_numpy()
        if moved.any():
            raise ValueError(f"edge {names[int(np.flatnonzero(moved)[0])]!r} joins two positions: an edge joins a writer "
                             "and a reader at the same position (attention moves information between positions inside "
                             "a head, between its k/v readers and its writer)")
        out = cls(graph.writer_index(parts[0]), graph.reader_index(parts[2]),
                  torch.tensor(parts[1].to_numpy(dtype="int64")))
        out.check(graph)
        return out

    @classmethod
    def every(cls, graph: EdgeGraph, n_pos: int) -> "EdgeSet":
        """Every existing edge at every position ``0..n_pos-1`` (ordered by writer, reader, position)."""
        w, r = graph.valid.nonzero(as_tuple=True)
        n = len(w)
        return cls(w.repeat_interleave(n_pos), r.repeat_interleave(n_pos), torch.arange(n_pos).repeat(n))

    @classmethod
    def parse(cls, graph: EdgeGraph, edges, n_pos: int | None = None) -> "EdgeSet":
        """From an EdgeSet, a list of names, or a table with columns writer, reader (names) and pos."""
        if isinstance(edges, EdgeSet):
            out = edges
            out.check(graph)
        elif hasattr(edges, "columns"):
            missing = {"writer", "reader", "pos"} - set(edges.columns)
            if missing:
                raise ValueError(f"edge table lacks columns {sorted(missing)}; expected writer, reader, pos")
            out = cls(graph.writer_index(edges["writer"]), graph.reader_index(edges["reader"]),
                      torch.tensor(edges["pos"].to_numpy(dtype="int64")))
            out.check(graph)
        else:
            out = cls.from_names(graph, edges)
        if len(out) == 0:
            raise ValueError("empty edge set: pass at least one edge (or edges=None for every edge)")
        if n_pos is not None:
            out.check_positions(graph, n_pos)
        return out

    def check(self, graph: EdgeGraph) -> None:
        """ValueError naming the first edge that does not exist (indices out of range: IndexError)."""
        for values, size, what in ((self.writer, graph.n_writers, "writer"), (self.reader, graph.n_readers, "reader")):
            out = (values < 0) | (values >= size)
            if out.any():
                raise IndexError(f"{what} index {int(values[out][0])} out of range 0..{size - 1}")
        invalid = ~graph.valid[self.writer, self.reader]
        if invalid.any():
            i = int(invalid.nonzero()[0])
            name = self.take(slice(i, i + 1)).names(graph)[0]
            why = graph.why_invalid(int(self.writer[i]), int(self.reader[i]))
            raise ValueError(f"edge {name!r} does not exist ({int(invalid.sum())} such edges): {why}")

    def check_positions(self, graph: EdgeGraph, n_pos: int) -> None:
        out = (self.pos < 0) | (self.pos >= n_pos)
        if out.any():
            i = int(out.nonzero()[0])
            raise IndexError(f"edge {self.take(slice(i, i + 1)).names(graph)[0]!r}: position {int(self.pos[i])} is out "
                             f"of range 0..{n_pos - 1} (the prompts have {n_pos} positions)")
