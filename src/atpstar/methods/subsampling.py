"""Subsampling: joint patches of random node subsets, read out per node as the
difference between the subsets that contain it and those that do not.

``samples`` subsets S are drawn, each node included independently with probability ``p``; each
subset is patched jointly on every prompt pair (one :class:`~atpstar.substrate.joint.JointPatcher` row per
subset and pair) and ``I(S)`` is its mean effect over pairs. A node's estimate is

    mean{I(S) : n ∈ S} − mean{I(S) : n ∉ S}.

When effects are additive (``I(S) = Σ_{m∈S} I(m)``) and inclusions independent, this is an unbiased
estimate of ``I(n)`` with variance about ``p(1−p) Σ_{m≠n} I(m)² · (1/K_in + 1/K_out)``
(``K_in``/``K_out``: subsets with/without n), i.e. about ``Σ_m I(m)² / samples`` whatever ``p``;
interactions between the patched nodes (non-additivity) are what a small ``p`` limits.

**Score = |estimate|**: the estimate targets the signed mean effect, and verification is after the
nodes with the largest true contribution ``|mean effect|`` (what :func:`atpstar.acp` scores), so its
magnitude is the natural ranking. A node never included (or never excluded) in any subset has no
estimate: effect NaN, score 0 (ranked last); ``info["unestimated"]`` counts them.

Memory stays flat in the number of nodes: membership is drawn in chunks of subsets sized to
``memory_mb``, and per-node sums are accumulated as tensors. Cost: the JointPatcher's forward-pass
equivalents (2 capture passes per pair plus one, partial, pass per subset and pair).
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
from .common import check_positive_int, joint_cost, sorted_scope, to_scores


def subsampling(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, p: float = 0.01, samples: int = 1000,
                batch_size: int | None = None, memory_mb: float = 1024, progress: bool = True, seed: int = 0) -> Scores:
    """Estimate every node's effect from joint patches of ``samples`` random subsets.

    Args:
        model, pairs, kinds, nodes, metric: as for :func:`atpstar.acp`.
        p: probability that a node is in a subset, strictly between 0 and 1.
        samples: number of random subsets (each costs one patched forward per pair), at least 2.
        batch_size: rows (subset × pair) per forward pass; default from ``memory_mb``.
        memory_mb: memory budget for one chunk of subset memberships and for a forward batch.
        seed: seed of the membership generator (same seed, same subsets).

    Returns:
        :class:`~atpstar.scores.Scores`: ``effect`` = the included-minus-excluded estimate, ``score`` =
        its magnitude; ``info["cost"]`` the forward-pass equivalents spent.
    """
    check_p(p, "node")
    check_positive_int("samples", samples, 2, "random subsets; the estimate needs subsets with and without each node")
    start = time.perf_counter()
    node_set, _ = sorted_scope(model, pairs, kinds, nodes)
    patcher = JointPatcher(model, pairs, node_set.kinds, metric, batch_size, memory_mb)
    chunk = chunk_size(len(node_set), p, pairs, samples, memory_mb)
    with tqdm(total=samples, desc="subsampling", unit="subset", disable=not progress, leave=False) as bar:
        estimate, ok = subsample(patcher, node_set, p, samples, chunk, seed, bar)
    info = {"metric": patcher.metric.name, "p": p, "samples": samples, "seed": seed,
            "patched_rows": patcher.stats["patched_rows"], "unestimated": int((~ok).sum()),
            "cost": joint_cost(patcher, pairs, start)}
    return to_scores("subsampling", model, pairs, node_set, estimate, estimate.abs().nan_to_num(0.0), info=info)


def subsample(patcher, units, p: float, samples: int, chunk: int, seed: int, bar=None) -> tuple[Tensor, Tensor]:
    """The estimator's core, for any units (nodes or edges): ``samples`` random subsets of ``units`` (each
    unit in with probability ``p``, drawn ``chunk`` subsets at a time from a generator seeded ``seed``),
    patched jointly by ``patcher.effects(units, members)`` -> (subsets, pairs). Returns the (N,) float64
    included-minus-excluded estimate (NaN where a unit was never in, or never out of, a subset) and the
    (N,) mask of estimated units."""
    n = len(units)
    gen = torch.Generator().manual_seed(seed)
    sum_in = torch.zeros(n, dtype=torch.float64)
    count_in = torch.zeros(n, dtype=torch.long)
    total = torch.zeros((), dtype=torch.float64)
    for lo in range(0, samples, chunk):
        members = torch.rand(min(chunk, samples - lo), n, generator=gen) < p
        effect = patcher.effects(units, members).mean(1)  # I(S): mean over pairs
        row, col = members.nonzero(as_tuple=True)
        sum_in.index_add_(0, col, effect[row])
        count_in += torch.bincount(col, minlength=n)
        total += effect.sum()
        if bar is not None:
            bar.update(len(members))
    count_out = samples - count_in
    ok = (count_in > 0) & (count_out > 0)
    estimate = torch.where(ok, sum_in / count_in.clamp(min=1) - (total - sum_in) / count_out.clamp(min=1), torch.nan)
    return estimate, ok


def check_p(p, unit: str) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
        raise ValueError(f"p must be a probability strictly between 0 and 1 (each {unit}'s chance to be in a subset), "
                         f"got {p!r}")


def chunk_size(n_units: int, p: float, pairs: PromptPairs, samples: int, memory_mb: float, entry_bytes: float = 32) -> int:
    """Subsets per chunk: a chunk's membership and the patcher's work on it (~16 bytes per cell plus
    ``entry_bytes`` per member entry and pair row) fit ``memory_mb``."""
    group = max(len(g.index) for g in pairs.groups())
    per_cell = 16 + entry_bytes * p * (group + 1)
    return max(1, min(samples, math.floor(memory_mb * 2**20 / (n_units * per_cell))))
