"""Cost of verified recall: what it costs, in forward-pass equivalents per prompt pair,
to have verified the true top-k nodes by following a ranking.

For a ranking and the exact truth (activation patching) over the same nodes, and every k = 1..K:

- ``verified``: how many nodes must be verified in rank order until the k nodes of largest true
  |mean effect| have all been verified (the largest rank among them, plus one);
- ``cost`` = the method's estimation cost per pair + ``verified`` (one forward pass per verified
  node per pair, the paper's unit). The oracle (ranking by the truth) has cost k;
- the same for a relaxed target: ``ceil(relaxed * k)`` of the true top-k verified.

**Ties in the truth** (equal |effect|, e.g. the many exact zeros of no-op patches): the true top-k
is then not unique; every choice of k nodes with the k largest values is a valid top-k, and the
cost is that of the cheapest one for this ranking (tied nodes are taken in ranking order). So a
method is never charged for the order in which it lists nodes the truth cannot tell apart.

Everything is vectorised (rank arrays, cumulative maxima; the relaxed target's order statistics in
blocks of k): rankings of all of a model's nodes hold ~10^6 entries.

**Edges** are units like nodes: a ranking may be an
:class:`~atpstar.edges.EdgeScores` (ranked by score), an edge table (``name`` column, e.g. the run
folder's ``edges.parquet``, in ranked order) or edge names in ranked order; the truth an
EdgeScores of exact edge effects or an edge table with ``effect_exact``, ``effect`` or ``score``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..cost import Cost
from ..ranking import Ranking, as_ranking, check_unique
from ..units import unit_of


def recall_cost(ranking, truth, k: int, estimation_cost=None, relaxed: float = 0.9, kinds=None) -> pd.DataFrame:
    """Cost of verifying the true top-k by following ``ranking``, for k = 1..``k``.

    Args:
        ranking: a Scores (ranked by score), a DataFrame with kind/layer/unit/pos in ranked order, a
            NodeSet or node names in ranked order. Nodes whose score is NaN go last; NaN-scored
            entries the truth does not have (a Scores' absent positions) are ignored.
        truth: exact effects: a Scores from :func:`atpstar.acp` (|mean effect|), a
            :class:`~atpstar.verification.Verification`, or a DataFrame with kind/layer/unit/pos and
            ``effect`` (signed mean; its absolute value is used) or ``score`` (= |mean effect|).
            Nodes with a NaN truth are not part of it.
            Edges alike (ranking and truth of one unit kind, else a TypeError): an EdgeScores, an edge table
            with ``name`` (and ``score``; a truth's ``effect_exact``, ``effect`` or ``score``), edge names, a
            Verification of edges.
        k: the largest k (at most the number of truth nodes).
        estimation_cost: the method's estimation cost: forward-pass equivalents per pair (a
            number), a :class:`~atpstar.cost.Cost`, or a Scores whose ``info["cost"]`` to use;
            None: 0 (e.g. the oracle).
        relaxed: fraction of the top-k that the relaxed target needs verified, in (0, 1].
        kinds: restrict ranking and truth to these node kinds (per-kind curves).

    Returns:
        DataFrame with one row per k: ``k``, ``cost``, ``cost_relaxed``, ``verified``,
        ``verified_relaxed``, ``target_relaxed`` (= ceil(relaxed·k)), ``estimation``, ``oracle`` (= k)
        and ``effect_k`` (the k-th largest true |mean effect|).
    """
    if not 0 < relaxed <= 1:
        raise ValueError(f"relaxed must be a fraction in (0, 1], got {relaxed!r}")
    estimation = _per_pair_cost(estimation_cost)
    unit = _unit(ranking, truth)
    if unit == "edge":
        if kinds is not None:
            raise ValueError("kinds= selects node kinds; edge rankings take no kinds (filter the edge table instead)")
        value, rank = _matched_edges(ranking, truth)
    else:
        value, rank = _matched(ranking, truth, kinds)
    n = len(value)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ValueError(f"k must be an integer in 1..{n} (the number of truth nodes), got {k!r}")
    order = np.lexsort((rank, -value))[:k]  # true top-k by |effect|; ties: in ranking order
    top_rank = rank[order]
    verified = np.maximum.accumulate(top_rank) + 1
    ks = np.arange(1, k + 1)
    target = np.maximum(1, np.ceil(relaxed * ks - 1e-9).astype(np.int64))
    verified_relaxed = _prefix_order_statistic(top_rank, target) + 1
    return pd.DataFrame({
        "k": ks, "cost": estimation + verified, "cost_relaxed": estimation + verified_relaxed,
        "verified": verified, "verified_relaxed": verified_relaxed, "target_relaxed": target,
        "estimation": estimation, "oracle": ks, "effect_k": value[order],
    })


def _per_pair_cost(estimation_cost) -> float:
    if estimation_cost is None:
        return 0.0
    if isinstance(estimation_cost, (int, float, np.floating, np.integer)) and not isinstance(estimation_cost, bool):
        cost = float(estimation_cost)
    else:
        try:
            cost = Cost.of(estimation_cost).per_pair()
        except (ValueError, TypeError, AttributeError) as err:
            raise TypeError(f"estimation_cost must be forward-pass equivalents per pair, a Cost or a Scores with "
                            f"info['cost'], got {type(estimation_cost).__name__}: {err}") from None
    if not cost >= 0:
        raise ValueError(f"estimation_cost must be >= 0 forward-pass equivalents per pair, got {cost!r}")
    return cost


def _truth(truth, kinds):
    """(NodeSet, |mean effect| float64 numpy) of the truth's nodes (NaN dropped)."""
    if hasattr(truth, "per_pair") and hasattr(truth, "nodes") and hasattr(truth, "rank"):  # a Verification
        ranked = as_ranking(Ranking(truth.nodes, truth.effect.abs(), truth.effect), kinds)
        value = ranked.score
    elif isinstance(truth, pd.DataFrame) or isinstance(getattr(truth, "score", None), dict):
        if isinstance(truth, pd.DataFrame) and "effect" not in truth.columns and "score" not in truth.columns:
            raise ValueError("truth table needs an 'effect' (exact signed mean effect) or 'score' (= |mean effect|) column")
        ranked = as_ranking(truth, kinds)
        use_effect = ranked.from_scores or "effect" in truth.columns
        value = ranked.estimate.abs() if use_effect else ranked.score
    else:
        raise TypeError(f"truth must be exact effects: a Scores from acp, a Verification or a DataFrame with an "
                        f"'effect' or 'score' column, got {type(truth).__name__}")
    keep = value.isfinite()
    return ranked.units.take(keep), value[keep].numpy()


def _dims(*sets) -> tuple[int, int, int]:
    def top(attr):
        return max([int(getattr(s, attr).max()) + 1 for s in sets if len(s)] + [1])

    if any(len(s) and min(int(t.min()) for t in (s.layer, s.unit, s.pos)) < 0 for s in sets):
        raise ValueError("node layer, unit and position must be >= 0")
    return top("layer"), top("unit"), top("pos")


def _matched(ranking, truth, kinds):
    """(|effect| per truth node, 0-based rank of that node in the ranking restricted to truth nodes)."""
    truth_nodes, value = _truth(truth, kinds)
    ranked = as_ranking(ranking, kinds)
    if len(truth_nodes) == 0:
        raise ValueError("the truth has no nodes (of these kinds) with a finite effect")
    dims = _dims(truth_nodes, ranked.units)
    t_ids, r_ids = truth_nodes.ids(dims), ranked.units.ids(dims)
    check_unique(truth_nodes, t_ids, "the truth")
    check_unique(ranked.units, r_ids, "the ranking")
    scored = ranked.from_scores or (isinstance(ranking, pd.DataFrame) and "score" in ranking.columns)
    # a NaN-scored entry the truth lacks is a node that exists for no pair: ignored
    counted = ~ranked.score.isnan().numpy() if scored else np.ones(len(r_ids), dtype=bool)
    return _ranks("node", t_ids.numpy(), value, r_ids.numpy(), counted, lambda i: _node_name(truth_nodes, i),
                  lambda i: _node_name(ranked.units, i),
                  "; rank and score the same node set (same kinds, positions and layers), or pass kinds=")


def _node_name(nodes, i: int) -> str:
    return nodes.take(slice(i, i + 1)).to_nodes()[0].name


def _ranks(unit: str, t_keys, value, r_keys, counted, truth_name, ranking_name, hint: str):
    """(``value``, the 0-based rank of each truth unit in the ranking restricted to truth units), the units
    matched by key (node ids or edge names, each unique on its side); ``counted``: ranking entries that must
    be in the truth (the others, e.g. NaN-scored ones, may be absent from it)."""
    position = pd.Index(r_keys).get_indexer(pd.Index(t_keys))
    missing = np.flatnonzero(position < 0)
    if len(missing):
        raise ValueError(f"truth and ranking cover different {unit}s: the truth has {len(missing)} {unit}s the ranking "
                         f"lacks (e.g. {truth_name(int(missing[0]))}){hint}")
    in_truth = np.zeros(len(r_keys), dtype=bool)
    in_truth[position] = True
    extra = np.flatnonzero(~in_truth & counted)
    if len(extra):
        raise ValueError(f"truth and ranking cover different {unit}s: the ranking has {len(extra)} {unit}s the truth "
                         f"lacks (e.g. {ranking_name(int(extra[0]))}){hint}")
    rank = np.cumsum(in_truth) - 1  # rank among the ranking's truth units
    return value, rank[position]


def _prefix_order_statistic(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """For each k: the ``target[k-1]``-th smallest of ``values[:k]`` (distinct integers), in blocks
    of rows of a (k, value) count table so memory stays ~16 MB."""
    n = len(values)
    sorted_vals = np.sort(values)
    comp = np.searchsorted(sorted_vals, values)  # values as a permutation of 0..n-1
    out = np.empty(n, dtype=np.int64)
    hist = np.zeros(n, dtype=np.int32)  # histogram of comp over the rows before this block
    block = max(1, 2**22 // max(n, 1))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        counts = np.zeros((hi - lo, n), dtype=np.int32)
        counts[np.arange(hi - lo), comp[lo:hi]] = 1
        counts = np.cumsum(counts, 0, out=counts) + hist  # row b: histogram of the first lo + b + 1 values
        hist = counts[-1].copy()
        below = np.cumsum(counts, 1, out=counts)  # row b, column j: how many of them are <= sorted_vals[j]
        out[lo:hi] = sorted_vals[np.argmax(below >= target[lo:hi, None], axis=1)]
    return out


# --- edges ------------------------------------------------------------------------------------------
def _unit(ranking, truth) -> str:
    unit, of_truth = unit_of(ranking), unit_of(truth)
    if unit != of_truth:
        raise TypeError(f"the ranking ({type(ranking).__name__}) is of {unit}s but the truth ({type(truth).__name__}) is "
                        f"of {of_truth}s: rank and measure the same units (node Scores with a node truth, EdgeScores "
                        "or edge tables with an edge truth)")
    return unit


def _edge_names(x, what: str) -> tuple[pd.Index, np.ndarray]:
    """(edge names in ranked order, score or NaN) of an edge ranking, or (names, |effect|) of a truth."""
    if hasattr(x, "per_pair") and hasattr(x, "to_frame"):  # a Verification of edges: its table (effect_exact)
        x = x.to_frame()
    if hasattr(x, "graph") and hasattr(x, "ranked_ids"):
        frame = x.to_frame()
        return pd.Index(frame["name"]), frame["score"].to_numpy(dtype=float)
    if isinstance(x, pd.DataFrame):
        if "name" not in x.columns:
            raise ValueError(f"{what}: an edge table needs a 'name' column ('L3.head.H5@12 -> L7.k.G1@12')")
        if what == "the truth":
            column = next((c for c in ("effect_exact", "effect") if c in x.columns), None)
            if column is None and "score" not in x.columns:
                raise ValueError("the truth's edge table needs 'effect_exact', 'effect' or 'score' (= |mean effect|)")
            value = x[column].abs() if column else x["score"]
        else:
            value = x["score"] if "score" in x.columns else pd.Series(np.nan, index=x.index)
        return pd.Index(x["name"].astype(str)), value.to_numpy(dtype=float)
    names = [str(n).strip() for n in x]
    return pd.Index(names), np.full(len(names), np.nan)


def _matched_edges(ranking, truth):
    """(|effect| per truth edge, 0-based rank of that edge in the ranking restricted to truth edges)."""
    t_names, value = _edge_names(truth, "the truth")
    keep = np.isfinite(value)
    t_names, value = t_names[keep], value[keep]
    r_names, r_score = _edge_names(ranking, "the ranking")
    if len(t_names) == 0:
        raise ValueError("the truth has no edges with a finite effect")
    for names, who in ((t_names, "the truth"), (r_names, "the ranking")):
        if not names.is_unique:
            raise ValueError(f"{who} lists the edge {names[names.duplicated()][0]!r} more than once")
    nan = np.isnan(r_score)
    if nan.any() and not nan.all():  # NaN-scored entries go last, each part in its given order
        order = np.concatenate([np.flatnonzero(~nan), np.flatnonzero(nan)])
        r_names, r_score = r_names[order], r_score[order]
    counted = ~np.isnan(r_score) if not nan.all() else np.ones(len(r_names), dtype=bool)
    return _ranks("edge", t_names, value, r_names, counted, lambda i: t_names[i], lambda i: r_names[i],
                  "; rank and patch the same edges")
