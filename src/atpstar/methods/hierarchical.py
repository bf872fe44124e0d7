"""Hierarchical (SPEC.md §8): recursive Blocks, descending only into groups with a large joint effect.

The scope is sorted unit-major, ``(kind, layer, unit, pos)``. Level 0 has one group per
(kind, layer). Every group of a level is patched jointly on every prompt pair; a group whose
|mean effect| exceeds the threshold, and that has more than one node, is split into ``branching``
contiguous children (fewer if it has fewer units or nodes) for the next level: a group spanning
several units is split between units (nearly equal numbers of units per child), a group inside one
unit is split between positions, so the descent goes layer → unit → position → node. A group of
one node is a *leaf*: its joint patch is exact activation patching of that node.

``threshold`` is absolute (``relative=False``: descend when |effect| > threshold) or relative
(``relative=True``: descend when |effect| > threshold × the largest |effect| among the groups of
the same level; a relative threshold must be below 1). Threshold 0 descends into every group with
a nonzero effect, down to every leaf it contains.

Ranking, encoded in ``score`` as a dense rank counted from the bottom (see
:func:`~atpstar.methods.common.rank_score`; the highest score is verified first): leaves first, by
|exact effect|; then the unexplored nodes by the depth of the deepest group patched that contains
them (deeper first), then by that group's |effect|. ``effect`` holds the leaf's exact effect, or
that group's mean effect, ``mean_abs`` the mean over pairs of its absolute value; ``info`` gives
``leaves``, ``groups`` patched per level and the cost: every joint patch (group × pair) plus
the capture passes, in forward-pass equivalents.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..substrate.joint import JointPatcher
from ..pairs import PromptPairs
from ..scores import Scores
from .common import check_positive_int, expand, joint_cost, range_effects, rank_score, runs, site_of, sorted_scope, to_scores


def hierarchical(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, branching: int = 4,
                 threshold: float = 0.1, relative: bool = True, batch_size: int | None = None,
                 memory_mb: float = 1024, progress: bool = True, seed: int = 0) -> Scores:
    """Rank nodes by recursive joint patching of groups (layer → unit → position → node).

    Args:
        model, pairs, kinds, nodes, metric: as for :func:`atpstar.acp`.
        branching: children per split group (>= 2).
        threshold: descend into groups whose |mean effect| exceeds it (>= 0); see ``relative``.
        relative: the threshold is a fraction (in [0, 1)) of the level's largest |group effect|.
        batch_size, memory_mb: as for :class:`~atpstar.substrate.joint.JointPatcher`.
        seed: unused (deterministic); accepted for a uniform signature.
    """
    check_positive_int("branching", branching, 2, "children per split group")
    _check_threshold(threshold, relative)
    start = time.perf_counter()
    node_set, key = sorted_scope(model, pairs, kinds, nodes, "unit")
    patcher = JointPatcher(model, pairs, node_set.kinds, metric, batch_size, memory_mb)
    n = len(node_set)
    unit_lo, unit_hi = runs(key // pairs.max_len)  # unit-major keys: key // n_pos names the unit
    unit_of = torch.repeat_interleave(torch.arange(len(unit_lo)), unit_hi - unit_lo)
    unit_start = torch.cat([unit_lo, torch.tensor([n])])
    depth = torch.zeros(n, dtype=torch.long)
    effect, mean_abs = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    leaf = torch.zeros(n, dtype=torch.bool)
    lo, hi = runs(site_of(model, key, pairs.max_len))
    groups = []
    bar = tqdm(desc="hierarchical", unit="group", disable=not progress, leave=False)
    while len(lo):
        bar.total = (bar.total or 0) + len(lo)
        per_pair = range_effects(patcher, node_set, lo, hi, bar)
        mean = per_pair.mean(1)
        group, member = expand(lo, hi)
        depth[member] = len(groups)
        effect[member], mean_abs[member] = mean[group], per_pair.abs().mean(1)[group]
        single = hi - lo == 1
        leaf[lo[single]] = True
        limit = threshold * float(mean.abs().max()) if relative else threshold
        groups.append(len(lo))
        descend = (mean.abs() > limit) & ~single
        lo, hi = split(lo[descend], hi[descend], unit_of, unit_start, branching)
    bar.close()
    score = rank_score(leaf.double(), torch.where(leaf, effect.abs(), depth.double()),
                       torch.where(leaf, 0.0, effect.abs()))
    info = {"metric": patcher.metric.name, "branching": branching, "threshold": threshold, "relative": relative,
            "groups": groups, "leaves": int(leaf.sum()), "patched_rows": patcher.stats["patched_rows"],
            "cost": joint_cost(patcher, pairs, start)}
    return to_scores("hierarchical", model, pairs, node_set, effect, score, mean_abs, info)


def split(lo: Tensor, hi: Tensor, unit_of: Tensor, unit_start: Tensor, branching: int) -> tuple[Tensor, Tensor]:
    """Children of groups ``[lo, hi)``: between units when a group spans several (groups hold whole
    units then), else between positions; ``min(branching, units or nodes)`` nearly equal children."""
    first_unit = unit_of[lo]
    n_units = unit_of[hi - 1] - first_unit + 1
    by_unit = n_units > 1
    span = torch.where(by_unit, n_units, hi - lo)
    k = span.clamp(max=branching)
    parent = torch.repeat_interleave(torch.arange(len(lo)), k)
    j = torch.arange(len(parent)) - torch.repeat_interleave(k.cumsum(0) - k, k)
    a, b = j * span[parent] // k[parent], (j + 1) * span[parent] // k[parent]
    last = len(unit_start) - 1
    unit_a = unit_start[(first_unit[parent] + a).clamp(max=last)]
    unit_b = unit_start[(first_unit[parent] + b).clamp(max=last)]
    by_unit = by_unit[parent]
    return torch.where(by_unit, unit_a, lo[parent] + a), torch.where(by_unit, unit_b, lo[parent] + b)


def _check_threshold(threshold, relative: bool) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0 (descend into groups whose |effect| exceeds it), "
                         f"got {threshold!r}")
    if relative and threshold >= 1:
        raise ValueError(f"a relative threshold is a fraction of the level's largest |group effect| and must be "
                         f"below 1 (at 1 no group is ever descended into), got {threshold!r}; pass relative=False "
                         "for an absolute threshold")
