"""Sets of nodes as flat tensors ``(kind, layer, unit, pos)``, parsed and range-checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .types import ALL_KINDS, Node, NodeKind

KIND_INDEX = {kind: i for i, kind in enumerate(ALL_KINDS)}
_NAME_PATTERN = r"^L(\d+)\.(q|k|v|head|neuron)\.([HGN])(\d+)@(\d+)$"
_LETTER_OF = {KIND_INDEX[k]: k.unit_letter for k in ALL_KINDS}


@dataclass(frozen=True)
class NodeSet:
    """N nodes; ``kind`` holds indices into :data:`~atpstar.types.ALL_KINDS`. Positions are aligned
    positions (see :mod:`atpstar.pairs`)."""

    unit_kind: ClassVar[str] = "node"
    """The unit kind (:mod:`atpstar.units`)."""

    kind: Tensor
    layer: Tensor
    unit: Tensor
    pos: Tensor

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def kinds(self) -> list[NodeKind]:
        present = set(self.kind.unique().tolist())
        return [k for k in ALL_KINDS if KIND_INDEX[k] in present]

    def take(self, mask_or_index) -> "NodeSet":
        return NodeSet(self.kind[mask_or_index], self.layer[mask_or_index], self.unit[mask_or_index], self.pos[mask_or_index])

    def to_nodes(self) -> list[Node]:
        return [Node(ALL_KINDS[k], l, u, p) for k, l, u, p in zip(*(t.tolist() for t in (self.kind, self.layer, self.unit, self.pos)))]

    @classmethod
    def from_names(cls, names) -> "NodeSet":
        """Vectorised :meth:`Node.parse` of many names (``"L3.q.H5@12"``); a bad name is a ValueError naming it."""
        import numpy as np
        import pandas as pd

        parts = pd.Series(names, dtype=object).astype(str).str.strip().str.extract(_NAME_PATTERN)
        bad = parts[0].isna()
        if bad.any():
            name = names[int(np.flatnonzero(bad.to_numpy())[0])]
            raise ValueError(f"cannot parse node name {name!r} ({int(bad.sum())} bad names); expected e.g. "
                             "'L3.q.H5@12', 'L0.k.G1@4', 'L2.neuron.N77@9'")
        kind = parts[1].map({k.value: i for k, i in KIND_INDEX.items()}).to_numpy(dtype="int64")
        wrong = parts[2].to_numpy() != np.array([_LETTER_OF[k] for k in range(len(ALL_KINDS))], dtype=object)[kind]
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            raise ValueError(f"node name {names[i]!r}: kind {ALL_KINDS[kind[i]].value!r} uses unit letter "
                             f"{ALL_KINDS[kind[i]].unit_letter!r}")
        cols = [kind, *(parts[i].to_numpy(dtype="int64") for i in (0, 3, 4))]
        return cls(*(torch.from_numpy(np.array(c, dtype=np.int64)) for c in cols))  # copies: writable

    def ids(self, dims: tuple[int, int, int]) -> Tensor:
        """(N,) int64 id of each node, unique within ``dims`` = (layers, max units, positions)."""
        n_layers, n_units, n_pos = dims
        return ((self.kind * n_layers + self.layer) * n_units + self.unit) * n_pos + self.pos

    @classmethod
    def every(cls, model, kinds, n_pos: int) -> "NodeSet":
        """All nodes of the given kinds at every layer and aligned position ``0..n_pos-1``."""
        parts = []
        for kind in NodeKind.parse(kinds):
            layer, unit, pos = torch.meshgrid(
                torch.arange(model.n_layers), torch.arange(model.units(kind)), torch.arange(n_pos), indexing="ij"
            )
            parts.append((torch.full((layer.numel(),), KIND_INDEX[kind]), layer.flatten(), unit.flatten(), pos.flatten()))
        return cls(*(torch.cat(cols) for cols in zip(*parts)))

    @classmethod
    def parse(cls, model, nodes, n_pos: int) -> "NodeSet":
        """From a NodeSet, a DataFrame with columns kind/layer/unit/pos, or a list of Node / names."""
        if isinstance(nodes, NodeSet):
            out = nodes
        elif isinstance(nodes, (str, Node)):
            raise TypeError(f"expected a collection of nodes, got the single node {str(nodes)!r}: wrap it in a list, "
                            f"e.g. [{str(nodes)!r}]")
        elif hasattr(nodes, "columns"):
            missing = {"kind", "layer", "unit", "pos"} - set(nodes.columns)
            if missing:
                raise ValueError(f"node table lacks columns {sorted(missing)}; expected kind, layer, unit, pos")
            kinds = nodes["kind"].astype(str).map({k.value: i for k, i in KIND_INDEX.items()})
            if kinds.isna().any():
                bad = sorted(set(nodes["kind"][kinds.isna()].astype(str)))
                raise ValueError(f"unknown node kinds {bad} in the node table; valid: {[k.value for k in ALL_KINDS]}")
            out = cls(*(torch.tensor(v.to_numpy(dtype="int64")) for v in (kinds, nodes["layer"], nodes["unit"], nodes["pos"])))
        elif len(nodes) and all(isinstance(n, str) for n in nodes):
            out = cls.from_names(list(nodes))
        else:
            rows = [Node.parse(n) if isinstance(n, str) else Node(NodeKind(n[0]), *map(int, n[1:])) for n in nodes]
            cols = list(zip(*[(KIND_INDEX[n.kind], n.layer, n.unit, n.pos) for n in rows])) or [(), (), (), ()]
            out = cls(*(torch.as_tensor(c, dtype=torch.long) for c in cols))
        if len(out) == 0:
            raise ValueError("empty node set: pass at least one node (or nodes=None for all nodes)")
        out.check(model, n_pos)
        return out

    def check(self, model, n_pos: int) -> None:
        """Raise IndexError naming the first node outside the model / prompt."""
        units = torch.tensor([model.units(k) for k in ALL_KINDS])[self.kind]
        checks = (
            (self.layer, model.n_layers, "layer"),
            (self.unit, units, "unit"),
            (self.pos, torch.full_like(self.pos, n_pos), "position"),
        )
        for values, bound, what in checks:
            bad = (values < 0) | (values >= bound)
            if bad.any():
                i = int(bad.nonzero()[0])
                node = self.take(slice(i, i + 1)).to_nodes()[0]
                limit = int(bound if isinstance(bound, int) else bound[i])
                raise IndexError(
                    f"node {node.name}: {what} {int(values[i])} is out of range 0..{limit - 1} "
                    f"({bad.sum().item()} bad nodes); the model has {model.n_layers} layers, {model.n_heads} heads, "
                    f"{model.n_kv_heads} kv heads, {model.d_mlp} neurons; the prompts have {n_pos} positions"
                )
