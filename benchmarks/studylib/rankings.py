"""Every method's ranking of a setting's nodes, with its estimation cost per pair.

AtP variants run once per setting over all node kinds (their cost does not depend on which kinds
are read); the non-gradient baselines run over the group's own node universe (joint patches).
Iterative (distribution setting only) reads the cached exact per-pair truth instead of re-patching
(activation patching is deterministic: the same numbers a live run computes), see :func:`iterative_from_truth`.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

import atpstar
from atpstar import Cost

from .frames import KEY

ATP_VARIANTS = {"AtP": (False, False), "AtP+QKfix": (True, False), "AtP+GradDrop": (False, True), "AtP*": (True, True)}
BASELINES = {  # options per node group; documented in docs/study.md
    "Subsampling": ("subsampling", {"attn": {"p": 0.02, "samples": 500}, "neuron": {"p": 0.005, "samples": 500},
                                    "neuron_pos": {"p": 0.005, "samples": 500}}),
    "Blocks": ("blocks", {"attn": {"size": 16}, "neuron": {"size": 64}, "neuron_pos": {"size": 64}}),
    "Hierarchical": ("hierarchical", {g: {"branching": 8, "threshold": 0.05, "relative": True}
                                      for g in ("attn", "neuron", "neuron_pos")}),
}
QUICK_BASELINES = {
    "Subsampling": ("subsampling", {"attn": {"p": 0.05, "samples": 40}, "neuron": {"p": 0.05, "samples": 40}}),
    "Blocks": ("blocks", {"attn": {"size": 16}, "neuron": {"size": 16}}),
    "Hierarchical": ("hierarchical", {"attn": {"branching": 8, "threshold": 0.05}, "neuron": {"branching": 8, "threshold": 0.05}}),
}


def frame_of(scores) -> pd.DataFrame:
    return scores.to_frame()[KEY + ["effect", "score"]]


def atp_rankings(model, pairs, ratio: float, kinds, variants=tuple(ATP_VARIANTS)) -> tuple[dict, dict]:
    """{variant: (frame, cost per pair)} and {variant: seconds}."""
    out, seconds = {}, {}
    for label in variants:
        qk_fix, graddrop = ATP_VARIANTS[label]
        start = time.perf_counter()
        scores = atpstar.atp(model, pairs, kinds=kinds, qk_fix=qk_fix, graddrop=graddrop, progress=False)
        seconds[label] = time.perf_counter() - start
        out[label] = (frame_of(scores), Cost.of(scores).per_pair(ratio))
    return out, seconds


def baseline_rankings(model, pairs, nodes: pd.DataFrame, group: str, quick: bool, seed: int = 0,
                      only=None) -> tuple[dict, dict]:
    """The joint-patching baselines (``only``: a subset of their labels) over ``nodes``."""
    out, seconds = {}, {}
    for label, (name, options) in (QUICK_BASELINES if quick else BASELINES).items():
        if only is not None and label not in only:
            continue
        start = time.perf_counter()
        scores = atpstar.METHODS[name](model, pairs, nodes=nodes, progress=False, seed=seed, **options[group])
        seconds[label] = time.perf_counter() - start
        out[label] = (frame_of(scores), Cost.of(scores).per_pair())
    return out, seconds


def reference_rankings(truth: pd.DataFrame, seed: int = 0) -> dict:
    """Oracle (exact order, cost 0) and a uniformly random order (cost 0)."""
    oracle = truth.sort_values("score", ascending=False, kind="stable")
    rng = np.random.default_rng(seed)
    shuffled = truth.iloc[rng.permutation(len(truth))]
    return {"oracle": (oracle, 0.0), "random": (shuffled.assign(score=np.arange(len(truth), 0, -1)), 0.0)}


def iterative_from_truth(per_pair: np.ndarray, nodes: pd.DataFrame, m: int = 20) -> tuple[pd.DataFrame, float]:
    """Iterative baseline on cached exact per-pair effects ``(P, N)``.

    Round r = 1..P: patch every not-yet-verified node on pair r (cost: that many forwards), rank the
    rest by |running mean effect| over pairs 1..r (the estimate of c(n) = |E[I]|), and fully verify the
    best ``m`` on all pairs (as ``atpstar.methods.iterative`` does with live patching).
    Final ranking: verified nodes first by exact |mean effect|, then the rest by running estimate.
    Returns the ranking and its estimation cost per pair: the single-pair sweeps only (Σ_r unverified
    nodes at round r, / P). The full verifications are charged by the recall curve, which verifies
    in this order from the start (so they are not counted twice)."""
    n_pairs, n = per_pair.shape
    verified = np.zeros(n, dtype=bool)
    seen_sum = np.zeros(n)
    cost = 0.0
    for r in range(n_pairs):
        todo = ~verified
        cost += todo.sum()
        seen_sum[todo] += np.nan_to_num(per_pair[r, todo])
        running = np.where(verified, -np.inf, np.abs(seen_sum) / (r + 1))
        best = np.argsort(-running, kind="stable")[:m]
        verified[best[~verified[best]]] = True
    exact = np.abs(np.nanmean(per_pair, axis=0))
    key = np.where(verified, 1e9 + exact, np.abs(seen_sum) / n_pairs)
    order = np.argsort(-key, kind="stable")
    frame = nodes.iloc[order].assign(score=key[order])
    return frame.reset_index(drop=True), cost / n_pairs
