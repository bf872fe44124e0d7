"""Hierarchical: recursive Blocks, descending only into groups with a large joint effect.

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
    check_threshold(threshold, relative)
    start = time.perf_counter()
    node_set, key = sorted_scope(model, pairs, kinds, nodes, "unit")
    patcher = JointPatcher(model, pairs, node_set.kinds, metric, batch_size, memory_mb)
    unit = key // pairs.max_len  # unit-major keys: key // n_pos names the unit
    with tqdm(desc="hierarchical", unit="group", disable=not progress, leave=False) as bar:
        effect, mean_abs, score, leaf, groups = descend(patcher, node_set, site_of(model, key, pairs.max_len), [unit],
                                                        branching, threshold, relative, bar)
    info = {"metric": patcher.metric.name, "branching": branching, "threshold": threshold, "relative": relative,
            "groups": groups, "leaves": int(leaf.sum()), "patched_rows": patcher.stats["patched_rows"],
            "cost": joint_cost(patcher, pairs, start)}
    return to_scores("hierarchical", model, pairs, node_set, effect, score, mean_abs, info)


def descend(patcher, units, site: Tensor, levels: list[Tensor], branching: int, threshold: float, relative: bool,
            bar=None, presence: Tensor | None = None, **limits):
    """The estimator's core, for any units (nodes or edges) sorted coarse to fine: level 0 patches one group per
    run of ``site``; a group whose |mean effect| passes the threshold is :func:`split` by the coarsest of
    ``levels`` ((N,) ids, each refining the previous one, equal ids contiguous) that it spans several
    values of, else between units; ``patcher.effects`` patches each level's groups jointly
    (:func:`~atpstar.methods.common.range_effects`, ``limits`` its chunk limits). Returns per unit
    (float64, (N,)): the deepest group's (a leaf's exact) mean effect, its mean |effect| over pairs, the
    ranking score (:func:`~atpstar.methods.common.rank_score` of: leaf, then leaves by |effect| and the
    others by depth, then the others by |effect|), the leaf mask, and the groups patched per level.
    ``presence`` ((N,), optional): the fraction of pairs that have each unit; a leaf's effect is then its mean
    over those pairs (a pair without the unit's position patches nothing), as exact patching reports it."""
    n = len(units)
    tables = []
    for ids in levels:
        lo, hi = runs(ids)
        tables.append((torch.repeat_interleave(torch.arange(len(lo)), hi - lo), torch.cat([lo, torch.tensor([n])])))
    depth = torch.zeros(n, dtype=torch.long)
    effect, mean_abs = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    leaf = torch.zeros(n, dtype=torch.bool)
    lo, hi = runs(site)
    groups = []
    while len(lo):
        if bar is not None:
            bar.total = (bar.total or 0) + len(lo)
        per_pair = range_effects(patcher, units, lo, hi, bar, **limits)
        mean = per_pair.mean(1)
        group, member = expand(lo, hi)
        depth[member] = len(groups)
        effect[member], mean_abs[member] = mean[group], per_pair.abs().mean(1)[group]
        single = hi - lo == 1
        leaf[lo[single]] = True
        limit = threshold * float(mean.abs().max()) if relative else threshold
        groups.append(len(lo))
        deeper = (mean.abs() > limit) & ~single
        lo, hi = split(lo[deeper], hi[deeper], tables, branching)
    if presence is not None:  # (N,) fraction of pairs having the unit: a leaf's mean over those, as exact patching's
        effect = torch.where(leaf, effect / presence, effect)
    score = rank_score(leaf.double(), torch.where(leaf, effect.abs(), depth.double()),
                       torch.where(leaf, 0.0, effect.abs()))
    return effect, mean_abs, score, leaf, groups


def split(lo: Tensor, hi: Tensor, tables: list[tuple[Tensor, Tensor]], branching: int) -> tuple[Tensor, Tensor]:
    """Children of groups ``[lo, hi)``: between the runs of the coarsest level a group spans several runs
    of (groups then hold whole runs), else between units; ``min(branching, runs or units)`` nearly equal
    children. ``tables``: per level, coarse to fine, (run of each unit, start of each run + [N])."""
    chosen = torch.full((len(lo),), -1)
    span = hi - lo
    for j, (run_of, _) in enumerate(tables):
        many = (chosen < 0) & (run_of[hi - 1] > run_of[lo])
        chosen[many] = j
        span[many] = run_of[hi[many] - 1] - run_of[lo[many]] + 1
    k = span.clamp(max=branching)
    parent = torch.repeat_interleave(torch.arange(len(lo)), k)
    j = torch.arange(len(parent)) - torch.repeat_interleave(k.cumsum(0) - k, k)
    a, b = j * span[parent] // k[parent], (j + 1) * span[parent] // k[parent]
    new_lo, new_hi = lo[parent] + a, lo[parent] + b
    for level, (run_of, run_start) in enumerate(tables):
        sel = chosen[parent] == level
        first, last = run_of[lo[parent[sel]]], len(run_start) - 1
        new_lo[sel] = run_start[(first + a[sel]).clamp(max=last)]
        new_hi[sel] = run_start[(first + b[sel]).clamp(max=last)]
    return new_lo, new_hi


def check_threshold(threshold, relative: bool) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0 (descend into groups whose |effect| exceeds it), "
                         f"got {threshold!r}")
    if relative and threshold >= 1:
        raise ValueError(f"a relative threshold is a fraction of the level's largest |group effect| and must be "
                         f"below 1 (at 1 no group is ever descended into), got {threshold!r}; pass relative=False "
                         "for an absolute threshold")
