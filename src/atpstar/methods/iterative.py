"""Iterative (distribution setting): exact patching one prompt pair at a time, with the
current best nodes verified on every pair between rounds.

Schedule. The pairs are visited in a seeded random order. Round ``r`` (``r = 0 .. rounds−1``):

1. every node not yet verified is patched exactly (:func:`atpstar.acp`, one node per patch) on the
   ``r``-th pair of the order; its running estimate is its mean effect over the pairs seen so far;
2. the ``per_round`` unverified nodes with the largest |running estimate| are *verified*: patched
   on every pair not seen yet, which completes their exact mean effect over all pairs.

After the last round, nodes seen on every pair (all of them when ``rounds`` = the number of pairs)
count as verified too. Ranking (``score``, a dense rank counted from the bottom; see
:func:`~atpstar.methods.common.rank_score`): verified nodes first by exact |mean effect|, then
the rest by |running estimate|, nodes with no estimate (absent from every pair seen) last.
``effect`` is the exact mean for verified nodes, the running estimate otherwise. Cost: the sum of
the acp calls' forward-pass equivalents (their clean/noise captures included: 2 per pair per call);
``info["node_pairs"]`` counts the (node, pair) patches, ``info["verified"]`` the verified nodes.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..cost import Cost
from ..metrics import resolve
from ..nodes import NodeSet
from ..pairs import PromptPairs
from ..scores import Scores
from .acp import acp
from .common import check_positive_int, gather, rank_score, sorted_scope, to_scores


def iterative(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, per_round: int = 10,
              rounds: int | None = None, batch_size: int | None = None, memory_mb: float = 1024,
              progress: bool = True, seed: int = 0) -> Scores:
    """Alternate exact patching of all unverified nodes on one more pair with verifying the best ones.

    Args:
        model, pairs, kinds, nodes, metric: as for :func:`atpstar.acp`; at least 2 pairs.
        per_round: nodes verified on all pairs after each round (>= 1).
        rounds: pairs visited (1 .. number of pairs); None: all of them.
        batch_size, memory_mb: as for :func:`atpstar.acp`.
        seed: seed of the order in which pairs are visited.
    """
    rounds = check_options(pairs, per_round, rounds)
    start = time.perf_counter()
    node_set, _ = sorted_scope(model, pairs, kinds, nodes)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed))
    patch = lambda mask, idx: _patch(model, pairs, node_set, mask, idx, metric, batch_size, memory_mb)  # noqa: E731
    effect, verified, cost, node_pairs = iterate(len(node_set), order, rounds, per_round, patch, progress)
    score = rank_score(verified.double(), effect.abs())
    info = {"metric": resolve(metric, pairs).name, "per_round": per_round, "rounds": rounds, "seed": seed,
            "verified": int(verified.sum()), "node_pairs": node_pairs, "pair_order": order.tolist(),
            "cost": Cost(cost.forward, pairs=len(pairs), seconds=time.perf_counter() - start)}
    return to_scores("iterative", model, pairs, node_set, effect, score, info=info)


def check_options(pairs: PromptPairs, per_round: int, rounds: int | None) -> int:
    """ValueError for options Iterative cannot run with; returns ``rounds`` (None: every pair)."""
    if len(pairs) < 2:
        raise ValueError("iterative is for a distribution of prompt pairs (at least 2); for one pair use acp")
    check_positive_int("per_round", per_round, 1, "units verified on all pairs per round")
    rounds = len(pairs) if rounds is None else rounds
    check_positive_int("rounds", rounds, 1, "prompt pairs visited")
    if rounds > len(pairs):
        raise ValueError(f"rounds must be at most the number of pairs ({len(pairs)}), got {rounds}")
    return rounds


def iterate(n: int, order: Tensor, rounds: int, per_round: int, patch, progress: bool, desc: str = "iterative"):
    """The schedule of the module docstring over ``n`` units (nodes or edges): ``patch(mask, pair_index)``
    returns the exact effects of the units ``mask`` on those pairs as (sum over the pairs, pairs where the
    unit exists, Cost). Returns (effect: running or exact mean, verified mask, total Cost, unit-pair patches)."""
    total, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.long)
    verified = torch.zeros(n, dtype=torch.bool)
    cost, node_pairs = Cost(pairs=len(order)), torch.zeros((), dtype=torch.long)
    for r in tqdm(range(rounds), desc=desc, unit="round", disable=not progress, leave=False):
        cost += _add(total, count, node_pairs, ~verified, patch(~verified, order[r:r + 1]))
        rest = order[r + 1:]
        if not len(rest):
            break
        running = (total / count).where(count > 0, torch.nan).abs().nan_to_num(nan=-1.0).where(~verified, -2.0)
        pick = torch.zeros(n, dtype=torch.bool)
        pick[torch.topk(running, min(per_round, int((running > -2).sum()))).indices] = True
        cost += _add(total, count, node_pairs, pick, patch(pick, rest))
        verified |= pick
    if rounds == len(order):
        verified[:] = True  # every unit was patched on every pair: all exact
    return (total / count).where(count > 0, torch.nan), verified, cost, int(node_pairs)


def _patch(model, pairs: PromptPairs, nodes: NodeSet, mask: Tensor, idx: Tensor, metric, batch_size, memory_mb):
    """Exact effects of ``nodes[mask]`` on the pairs ``idx``: (sum over those pairs, pairs where the node
    exists, Cost). Positions are re-aligned to the subset's own length (right-aligned)."""
    sub = pairs.select(idx)
    shift = pairs.max_len - sub.max_len
    chosen = nodes.take(mask)
    local = NodeSet(chosen.kind, chosen.layer, chosen.unit, chosen.pos - shift)
    present = local.pos >= 0  # absent from every pair of the subset otherwise
    sums = torch.zeros(len(chosen), dtype=torch.float64)
    counts = torch.zeros(len(chosen), dtype=torch.long)
    if not present.any():
        return sums, counts, Cost(pairs=len(sub))
    local = local.take(present)
    result = acp(model, sub, nodes=local, metric=metric, batch_size=batch_size, memory_mb=memory_mb, progress=False)
    lengths = torch.tensor(sub.lengths)
    counts[present] = (lengths[None, :] >= sub.max_len - local.pos[:, None]).sum(1)
    sums[present] = gather(result.effect, local).nan_to_num(0.0) * counts[present]
    return sums, counts, Cost.of(result)


def _add(total: Tensor, count: Tensor, node_pairs: Tensor, mask: Tensor, patched) -> Cost:
    """Add one acp call's sums and counts to the running totals; return its cost."""
    sums, counts, cost = patched
    total[mask] += sums
    count[mask] += counts
    node_pairs += counts.sum()
    return cost
