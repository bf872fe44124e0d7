"""Blocks: joint patches of blocks of consecutive nodes; a block's effect ranks its members.

The scope is sorted inside each (kind, layer) either **unit-major** (``order="unit"``, the default:
one unit's positions in turn, then the next unit, as Hierarchical descends) or **position-major**
(``order="position"``: every unit at one position, then the next position). Each (kind, layer) is cut
into blocks of ``size`` consecutive nodes (the last block of a layer may be smaller; a block never
spans two layers or kinds), and each block is patched jointly on every prompt pair.

Every member of a block gets ``score`` = |block effect| (mean over pairs) and ``effect`` = the signed
block effect; ``mean_abs`` = mean over pairs of |block effect|. Verifying in score order thus
verifies whole blocks in order of |block effect|; members of one block tie, and ties are broken by
the stable (kind, layer, unit, pos) order of :meth:`Scores.to_frame`. When effects are additive a
block's effect is the sum of its members' effects. Cost: the JointPatcher's forward-pass
equivalents (2 capture passes per pair plus one, partial, pass per block and pair).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..substrate.joint import JointPatcher
from ..pairs import PromptPairs
from ..scores import Scores
from .common import check_positive_int, expand, joint_cost, range_effects, runs, site_of, sorted_scope, to_scores


def blocks(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, size: int = 16, order: str = "unit",
           batch_size: int | None = None, memory_mb: float = 1024, progress: bool = True, seed: int = 0) -> Scores:
    """Rank nodes by the effect of jointly patching their block.

    Args:
        model, pairs, kinds, nodes, metric: as for :func:`atpstar.acp`.
        size: nodes per block (>= 1; 1 is activation patching through joint patches).
        order: ``"unit"`` (unit-major) or ``"position"`` (position-major) order inside a layer.
        batch_size, memory_mb: as for :class:`~atpstar.substrate.joint.JointPatcher`.
        seed: unused (Blocks is deterministic); accepted for a uniform signature.

    Returns:
        :class:`~atpstar.scores.Scores` with each member's ``effect`` = its block's mean effect and
        ``score`` = its magnitude; ``info["blocks"]`` the number of blocks, ``info["cost"]`` the cost.
    """
    check_positive_int("size", size, 1, "nodes per block")
    start = time.perf_counter()
    node_set, key = sorted_scope(model, pairs, kinds, nodes, order)
    patcher = JointPatcher(model, pairs, node_set.kinds, metric, batch_size, memory_mb)
    site = site_of(model, key, pairs.max_len)
    with tqdm(desc="blocks", unit="block", disable=not progress, leave=False) as bar:
        mean, mean_abs, n_blocks = block_means(patcher, node_set, site, size, bar)
    info = {"metric": patcher.metric.name, "size": size, "order": order, "blocks": n_blocks,
            "patched_rows": patcher.stats["patched_rows"], "cost": joint_cost(patcher, pairs, start)}
    return to_scores("blocks", model, pairs, node_set, mean, mean.abs(), mean_abs, info)


def block_means(patcher, units, site: Tensor, size: int, bar=None, **limits) -> tuple[Tensor, Tensor, int]:
    """The estimator's core, for any units (nodes or edges) sorted so that a block is contiguous: blocks of
    ``size`` consecutive units that never cross a change of ``site``, each patched jointly by
    ``patcher.effects`` (:func:`~atpstar.methods.common.range_effects`, ``limits`` its chunk limits).
    Returns each unit's block mean effect and mean |effect| over pairs ((N,) float64) and the number of blocks."""
    lo, hi = block_ranges(site, size)
    if bar is not None:
        bar.total = len(lo)
    effect = range_effects(patcher, units, lo, hi, bar, **limits)
    block, _ = expand(lo, hi)  # members are the sorted units, in order
    return effect.mean(1)[block], effect.abs().mean(1)[block], len(lo)


def block_ranges(site, size: int):
    """Start and end (exclusive) of blocks of ``size`` consecutive nodes, never crossing a change of ``site``."""
    site_lo, site_hi = runs(site)
    n_blocks = (site_hi - site_lo + size - 1) // size
    owner = torch.repeat_interleave(torch.arange(len(site_lo)), n_blocks)
    j = torch.arange(len(owner)) - torch.repeat_interleave(n_blocks.cumsum(0) - n_blocks, n_blocks)
    lo = site_lo[owner] + j * size
    return lo, torch.minimum(lo + size, site_hi[owner])
