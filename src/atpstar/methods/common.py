"""Shared pieces of the node-list baselines: the node scope in a canonical order, flat
per-node results turned into :class:`~atpstar.scores.Scores`, lexicographic ranks encoded as a
score, and joint patches of contiguous node ranges in memory-bounded chunks.

Every baseline works on a flat list of nodes sorted by ``(kind, layer, unit, pos)`` ("unit-major")
or ``(kind, layer, pos, unit)`` ("position-major"); contiguous ranges of that list are the groups
that Blocks and Hierarchical patch jointly.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from ..cost import Cost
from ..nodes import NodeSet
from ..scores import Scores
from ..types import ALL_KINDS

ORDERS = ("unit", "position")
MAX_RANGE_NODES = 2**20
"""At most this many nodes (summed over sets) per call of the JointPatcher."""
MAX_RANGE_CELLS = 2**24
"""At most this many cells (sets × nodes) in one membership matrix handed to the JointPatcher."""
MAX_RANGE_SETS = 2**16
"""At most this many sets per call of the JointPatcher."""


def scope(model, pairs, kinds=None, nodes=None) -> NodeSet:
    """The nodes a method ranks: ``nodes`` (parsed, range-checked) or every node of ``kinds``."""
    n_pos = pairs.max_len
    return NodeSet.every(model, kinds, n_pos) if nodes is None else NodeSet.parse(model, nodes, n_pos)


def sort_key(model, nodes: NodeSet, n_pos: int, order: str = "unit") -> Tensor:
    """(N,) int64 key ordering nodes by (kind, layer, unit, pos) or, ``order="position"``, (kind, layer, pos, unit).
    ``key // (units_max * n_pos)`` identifies the (kind, layer) and, unit-major, ``key // n_pos`` the unit."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS} (unit-major or position-major inside a layer), got {order!r}")
    n_units = max(model.units(k) for k in ALL_KINDS)
    site = nodes.kind * model.n_layers + nodes.layer
    if order == "unit":
        return (site * n_units + nodes.unit) * n_pos + nodes.pos
    return (site * n_pos + nodes.pos) * n_units + nodes.unit


def site_of(model, key: Tensor, n_pos: int) -> Tensor:
    """(kind, layer) identifier of each :func:`sort_key` (either order)."""
    return key // (max(model.units(k) for k in ALL_KINDS) * n_pos)


def sorted_scope(model, pairs, kinds=None, nodes=None, order: str = "unit") -> tuple[NodeSet, Tensor]:
    """The scope without duplicates, sorted by :func:`sort_key`; returns the nodes and their keys."""
    node_set = scope(model, pairs, kinds, nodes)
    key = sort_key(model, node_set, pairs.max_len, order)
    key, first = _unique_sorted(key)
    return node_set.take(first), key


def _unique_sorted(key: Tensor) -> tuple[Tensor, Tensor]:
    order = torch.argsort(key, stable=True)
    key = key[order]
    keep = torch.ones(len(key), dtype=torch.bool)
    keep[1:] = key[1:] != key[:-1]
    return key[keep], order[keep]


def runs(ids: Tensor) -> tuple[Tensor, Tensor]:
    """Start and end (exclusive) of each run of equal consecutive values of ``ids``."""
    _, counts = torch.unique_consecutive(ids, return_counts=True)
    hi = counts.cumsum(0)
    return hi - counts, hi


def expand(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """For contiguous ranges ``[lo[i], hi[i])``: (range of each member, index of each member), concatenated."""
    length = hi - lo
    member = torch.repeat_interleave(torch.arange(len(lo)), length)
    offset = torch.repeat_interleave(lo - (length.cumsum(0) - length), length)
    return member, offset + torch.arange(len(member))


def gather(tensors: dict, nodes: NodeSet) -> Tensor:
    """Flat float64 values of ``nodes`` from per-kind [layer, unit, pos] tensors (e.g. ``Scores.effect``)."""
    out = torch.full((len(nodes),), torch.nan, dtype=torch.float64)
    for kind in nodes.kinds:
        sel = nodes.kind == ALL_KINDS.index(kind)
        out[sel] = tensors[kind][nodes.layer[sel], nodes.unit[sel], nodes.pos[sel]].double()
    return out


def to_scores(method: str, model, pairs, nodes: NodeSet, effect: Tensor, score: Tensor, mean_abs: Tensor | None = None,
              info: dict | None = None) -> Scores:
    """Scatter flat per-node values (float64, aligned with ``nodes``) into per-kind [layer, unit, pos]
    tensors, NaN for every node outside the scope."""
    columns = {"effect": effect, "score": score, "mean_abs": torch.full_like(effect, torch.nan) if mean_abs is None else mean_abs}
    out = {name: {} for name in columns}
    for kind in nodes.kinds:
        sel = nodes.kind == ALL_KINDS.index(kind)
        index = (nodes.layer[sel], nodes.unit[sel], nodes.pos[sel])
        for name, values in columns.items():
            tensor = torch.full((model.n_layers, model.units(kind), pairs.max_len), torch.nan, dtype=torch.float64)
            tensor[index] = values[sel].double()
            out[name][kind] = tensor
    return Scores(method, out["effect"], out["score"], len(pairs), out["mean_abs"], None, info or {})


def rank_score(*keys: Tensor) -> Tensor:
    """A float64 score that orders nodes lexicographically by ``keys`` (each: higher first, NaN last
    within its key): the dense rank counted from the bottom, ``1`` for the last node and the number
    of distinct key tuples for the first; nodes equal on every key share a score."""
    n = len(keys[0])
    if n == 0:
        return torch.zeros(0, dtype=torch.float64)
    order = torch.arange(n)
    for key in reversed(keys):  # least significant first, stable sorts keep earlier orders
        key = key.double().nan_to_num(nan=-torch.inf)
        order = order[torch.argsort(key[order], descending=True, stable=True)]
    new = torch.ones(n, dtype=torch.bool)
    ordered = torch.stack([k.double().nan_to_num(nan=-torch.inf)[order] for k in keys])
    new[1:] = (ordered[:, 1:] != ordered[:, :-1]).any(0)
    rank = new.cumsum(0)  # dense rank: 1 for the first node
    score = torch.empty(n, dtype=torch.float64)
    score[order] = (int(rank[-1]) + 1 - rank).double()
    return score


def range_effects(patcher, nodes, lo: Tensor, hi: Tensor, bar=None, max_units: int = MAX_RANGE_NODES,
                  max_cells: int = MAX_RANGE_CELLS) -> Tensor:
    """(sets, pairs) effects of patching each contiguous range ``nodes[lo[i]:hi[i]]`` jointly.

    ``nodes``: any units with ``take`` (a NodeSet, an EdgeSet), ``patcher``: anything with
    ``effects(units, members)`` and ``pairs`` (a JointPatcher, an EdgePatcher). Ranges are handed to
    the patcher in chunks whose unit count and membership matrix stay within ``max_units`` /
    ``max_cells``, each chunk with only its own units, so memory does not grow with the size of the scope."""
    length = hi - lo
    out = torch.empty(len(lo), len(patcher.pairs), dtype=torch.float64)
    cum = torch.cat([torch.zeros(1, dtype=torch.long), length.cumsum(0)])
    start = 0
    while start < len(lo):
        k = torch.arange(1, min(len(lo) - start, MAX_RANGE_SETS) + 1)
        total = cum[start + k] - cum[start]
        fits = ((total <= max_units) & (k * total <= max_cells)).sum()
        end = start + max(1, int(fits))
        row, idx = expand(lo[start:end], hi[start:end])
        members = torch.zeros(end - start, len(row), dtype=torch.bool)
        members[row, torch.arange(len(row))] = True
        out[start:end] = patcher.effects(nodes.take(idx), members)
        if bar is not None:
            bar.update(end - start)
        start = end
    return out


def joint_cost(patcher, pairs, start: float) -> Cost:
    """The work of a JointPatcher (captures and patches) as a Cost, wall-clock since ``start``."""
    return Cost(forward=float(patcher.stats["forward_equivalents"]), pairs=len(pairs), seconds=time.perf_counter() - start)


def check_positive_int(name: str, value, minimum: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} ({what}), got {value!r}")
