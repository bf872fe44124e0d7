"""Rankings: an ordered list of nodes with the ranking method's score and estimate, read from any of
the forms a method's output takes (a :class:`~atpstar.scores.Scores`, a node table, node names).

Shared by :func:`atpstar.verify` (verify nodes in this order) and :func:`atpstar.recall_cost`
(what it costs to verify the true top-k in this order). Everything is vectorised: rankings of
all nodes of a model hold ~10^6 entries.

Order: a ``Scores`` is ranked by ``score``, descending, ties kept in its table order (kind, layer,
unit, position: the order of ``Scores.to_frame()``). A table or a list of names is taken in the
order given. In every form, entries whose score is NaN go last (in their given order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .nodes import KIND_INDEX, NodeSet
from .types import ALL_KINDS, NodeKind



@dataclass(frozen=True)
class Ranking:
    """N units (nodes, edges...) in ranked order (best first), with the ranking's score and estimate."""

    units: object
    """The ranked units (a NodeSet, an EdgeSet...), best first."""
    score: Tensor
    """(N,) float64 ranking score (NaN: none given)."""
    estimate: Tensor
    """(N,) float64 signed estimate of the mean effect (NaN: none given)."""
    from_scores: bool = False
    """Read from a Scores object (NaN there means: node not computed / absent)."""

    def __len__(self) -> int:
        return len(self.units)

    def take(self, index) -> "Ranking":
        return Ranking(self.units.take(index), self.score[index], self.estimate[index], self.from_scores)


def as_ranking(ranking, kinds=None) -> Ranking:
    """A :class:`Ranking` from a Scores, a DataFrame with kind/layer/unit/pos (optional ``score`` and
    ``effect`` columns), a NodeSet, or a sequence of node names / :class:`~atpstar.types.Node`.

    ``kinds``: keep only nodes of these kinds. NaN scores are moved last (stable)."""
    if isinstance(ranking, Ranking):
        out = ranking
    elif hasattr(ranking, "score") and hasattr(ranking, "effect") and isinstance(ranking.score, dict):
        out = _from_scores(ranking)
    elif isinstance(ranking, pd.DataFrame):
        out = _from_frame(ranking)
    elif isinstance(ranking, NodeSet):
        out = plain(ranking)
    else:
        out = _from_list(ranking)
    if kinds is not None:
        wanted = torch.tensor([KIND_INDEX[k] for k in NodeKind.parse(kinds)])
        out = out.take(torch.isin(out.units.kind, wanted))
    nan = out.score.isnan()
    if nan.any():  # stable: finite scores first, NaN ones after, each in their own order
        out = out.take(torch.cat([(~nan).nonzero().flatten(), nan.nonzero().flatten()]))
    return out


def plain(units) -> Ranking:
    """``units`` in the given order, with no score or estimate (NaN)."""
    nan = torch.full((len(units),), float("nan"), dtype=torch.float64)
    return Ranking(units, nan, nan.clone())


def _from_scores(scores) -> Ranking:
    parts = []
    for kind in scores.kinds:
        sc = scores.score[kind]
        layer, unit, pos = (t.flatten() for t in torch.meshgrid(*(torch.arange(n) for n in sc.shape), indexing="ij"))
        parts.append((torch.full_like(layer, KIND_INDEX[kind]), layer, unit, pos,
                      sc.flatten().double(), scores.effect[kind].flatten().double()))
    if not parts:
        raise ValueError("the ranking Scores holds no node kinds")
    kind, layer, unit, pos, score, estimate = (torch.cat(c) for c in zip(*parts))
    order = torch.from_numpy(np.argsort(-score.numpy(), kind="stable"))  # NaN last, ties in table order
    nodes = NodeSet(kind[order], layer[order], unit[order], pos[order])
    return Ranking(nodes, score[order], estimate[order], from_scores=True)


def _from_frame(frame: pd.DataFrame) -> Ranking:
    missing = {"kind", "layer", "unit", "pos"} - set(frame.columns)
    if missing:
        raise ValueError(f"ranking table lacks columns {sorted(missing)}; expected kind, layer, unit, pos in ranked order")
    kind = frame["kind"]
    codes = pd.Categorical(kind, categories=[k.value for k in ALL_KINDS]).codes  # NodeKind members match too
    if (codes < 0).any():  # codes follow ALL_KINDS, i.e. KIND_INDEX
        bad = sorted(set(kind[codes < 0].astype(str)))
        raise ValueError(f"unknown node kinds {bad} in the ranking table; valid: {[k.value for k in ALL_KINDS]}")
    cols = [torch.from_numpy(np.array(v, dtype=np.int64)) for v in (codes, frame["layer"], frame["unit"], frame["pos"])]
    nan = np.full(len(frame), np.nan)
    score = frame["score"].to_numpy(dtype="float64") if "score" in frame.columns else nan
    estimate = frame["effect"].to_numpy(dtype="float64") if "effect" in frame.columns else nan
    return Ranking(NodeSet(*cols), torch.from_numpy(np.array(score)), torch.from_numpy(np.array(estimate)))


def _from_list(items) -> Ranking:
    items = list(items)
    if items and all(isinstance(x, str) for x in items):
        return plain(NodeSet.from_names(items))
    if not items:
        return plain(NodeSet(*(torch.zeros(0, dtype=torch.long) for _ in range(4))))
    kinds = [KIND_INDEX[NodeKind(n[0])] for n in items]  # Node tuples (kind, layer, unit, pos)
    cols = [kinds, *([int(n[i]) for n in items] for i in (1, 2, 3))]
    return plain(NodeSet(*(torch.tensor(c, dtype=torch.long) for c in cols)))


def check_unique(units, ids: Tensor, what: str, names=None, unit: str = "node") -> None:
    """Raise ValueError naming a unit that appears twice (``names(units)``: their names; default: nodes')."""
    sorted_ids, order = torch.sort(ids, stable=True)
    dup = (sorted_ids[1:] == sorted_ids[:-1]).nonzero().flatten()
    if len(dup):
        i = int(order[dup[0] + 1])
        one = units.take(slice(i, i + 1))
        name = names(one)[0] if names is not None else one.to_nodes()[0].name
        raise ValueError(f"{what} names {unit} {name} more than once ({len(dup)} repeats); "
                         f"a ranking lists each {unit} once")
