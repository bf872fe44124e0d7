"""The project's vocabulary: node kinds, node addresses and the sites where they live.

A *node* is one intermediate activation of the model at one token position:

==========  =======================================================  =====================
kind        what it is                                               unit
==========  =======================================================  =====================
``q``       one query head's query vector, as attention sees it      query head
            (after rotary embedding and QK-norm)
``k``       one key-value head's key vector (after rotary / QK-norm) key-value head
``v``       one key-value head's value vector                        key-value head
``head``    one head's output ``softmax(qk)·v`` before the output     query head
            projection mixes heads (a.k.a. ``z``)
``neuron``  one MLP hidden unit after the nonlinearity (the input    neuron
            of the down projection; act(gate)·up for gated MLPs)
==========  =======================================================  =====================

With grouped-query attention a ``k``/``v`` node belongs to a key-value head and is shared by the
query heads that read it. Every node has a stable printable name such as ``L3.q.H5@12``
(layer 3, query head 5, position 12); see :meth:`Node.name` / :meth:`Node.parse`.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import NamedTuple


class NodeKind(str, Enum):
    """The node kinds. The string value is the name used everywhere (CLI, frames)."""

    Q = "q"
    """Query vector of one query head at one position (post-rotary, post QK-norm)."""
    K = "k"
    """Key vector of one key-value head at one position (post-rotary, post QK-norm)."""
    V = "v"
    """Value vector of one key-value head at one position."""
    HEAD = "head"
    """Output of one query head at one position, before the output projection."""
    NEURON = "neuron"
    """One MLP hidden unit (input of the down projection) at one position."""

    @property
    def is_attention(self) -> bool:
        return self is not NodeKind.NEURON

    @property
    def unit_letter(self) -> str:
        """Letter used in printable names: H (query head), G (kv head group), N (neuron)."""
        return {"q": "H", "head": "H", "k": "G", "v": "G", "neuron": "N"}[self.value]

    @classmethod
    def parse(cls, kinds: "KindsLike") -> list["NodeKind"]:
        """Turn ``"attn"``, ``"all"``, ``"q,k"``, ``["q", NodeKind.K]`` ... into a list of kinds."""
        if kinds is None:
            return list(ATTENTION_KINDS)
        if isinstance(kinds, (str, NodeKind)):
            kinds = [kinds]
        out: list[NodeKind] = []
        for item in kinds:
            if isinstance(item, NodeKind):
                names = [item.value]
            else:
                names = [s.strip() for s in str(item).split(",") if s.strip()]
            for name in names:
                if name in KIND_GROUPS:
                    out.extend(KIND_GROUPS[name])
                    continue
                try:
                    out.append(cls(name))
                except ValueError:
                    valid = ", ".join([k.value for k in cls] + list(KIND_GROUPS))
                    raise ValueError(f"unknown node kind {name!r}; valid kinds: {valid}") from None
        if not out:
            raise ValueError("no node kinds given; use e.g. kinds=['q', 'k', 'v', 'head'] or 'all'")
        return list(dict.fromkeys(out))


ATTENTION_KINDS = (NodeKind.Q, NodeKind.K, NodeKind.V, NodeKind.HEAD)
ALL_KINDS = (*ATTENTION_KINDS, NodeKind.NEURON)
KIND_GROUPS = {"attn": ATTENTION_KINDS, "attention": ATTENTION_KINDS, "all": ALL_KINDS}
KindsLike = "str | NodeKind | list[str | NodeKind] | None"

_NAME_RE = re.compile(r"^L(\d+)\.(q|k|v|head|neuron)\.([HGN])(\d+)@(\d+)$")


class Node(NamedTuple):
    """Address of one node: ``(kind, layer, unit, pos)``, all 0-based.

    ``unit`` is the query head for ``q``/``head``, the key-value head for ``k``/``v`` and the
    neuron index for ``neuron``. ``pos`` is the token position (see :class:`~atpstar.pairs.PromptPairs`
    for how positions are aligned across prompts of different lengths).
    """

    kind: NodeKind
    layer: int
    unit: int
    pos: int

    @property
    def name(self) -> str:
        kind = NodeKind(self.kind)
        return f"L{self.layer}.{kind.value}.{kind.unit_letter}{self.unit}@{self.pos}"

    @classmethod
    def parse(cls, name: str) -> "Node":
        """Inverse of :attr:`name`: ``Node.parse("L3.q.H5@12") == Node(NodeKind.Q, 3, 5, 12)``."""
        m = _NAME_RE.match(name.strip())
        if not m:
            raise ValueError(
                f"cannot parse node name {name!r}; expected e.g. 'L3.q.H5@12', 'L0.k.G1@4', 'L2.neuron.N77@9'"
            )
        kind = NodeKind(m.group(2))
        if m.group(3) != kind.unit_letter:
            raise ValueError(f"node name {name!r}: kind {kind.value!r} uses unit letter {kind.unit_letter!r}")
        return cls(kind, int(m.group(1)), int(m.group(4)), int(m.group(5)))

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.name


PROBS = "probs"
"""Site name of the attention probabilities (B, H, T, S) of one layer (used by the QK fix)."""
RESID = "resid"
"""Site name of the residual stream entering block ``layer`` (``layer == n_layers``: after the last block)."""
