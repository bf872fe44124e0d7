"""Cost of verified recall: known answers on hand-made rankings, the relaxed target,
ties, NaN scores, mismatched node sets, every method's cost, and a ~10^6-node input."""

import bisect
import math

import numpy as np
import pandas as pd
import pytest
from conftest import random_pairs, tiny_model

import atpstar
from atpstar import Cost, recall_cost


def _frame(values, names=None, column="effect"):
    """Nodes L0.q.H0@i with the given values (pos i = the node's index)."""
    n = len(values)
    frame = pd.DataFrame({"kind": "q", "layer": 0, "unit": 0, "pos": np.arange(n), column: values})
    return frame


def _names(positions):
    return [f"L0.q.H0@{p}" for p in positions]


def _naive(values: dict, order: list, k: int, relaxed: float):
    """Plain loops: (verified, verified_relaxed) for k = 1..k; truth ties taken in ranking order."""
    rank = {n: i for i, n in enumerate(order)}
    top = sorted(values, key=lambda n: (-values[n], rank[n]))[:k]
    seen, full, part = [], [], []
    for i, node in enumerate(top, 1):
        bisect.insort(seen, rank[node])
        full.append(seen[-1] + 1)
        part.append(seen[max(1, math.ceil(relaxed * i - 1e-9)) - 1] + 1)
    return full, part


def test_oracle_costs_k_and_reversed_order_costs_everything():
    values = np.random.default_rng(0).permutation(np.linspace(0.1, 5, 40))
    truth = _frame(values)
    oracle = truth.sort_values("effect", ascending=False)
    got = recall_cost(oracle, truth, k=40)
    assert got["cost"].tolist() == list(range(1, 41)) and (got["cost"] == got["oracle"]).all()
    assert (got["cost_relaxed"] == got["target_relaxed"]).all()  # the first ceil(0.9 k) nodes
    assert np.allclose(got["effect_k"], np.sort(values)[::-1])
    backwards = recall_cost(oracle.iloc[::-1], truth, k=40)
    assert (backwards["cost"] == 40).all()  # the top node is verified last
    ks = backwards["k"].to_numpy()
    assert (backwards["verified_relaxed"] == 40 - ks + backwards["target_relaxed"]).all()


def test_hand_made_ranking_with_ties_and_estimation_cost():
    """Truth a=5, b=3, c=3, d=1, e=0, f=0; ranking d, c, a, e, b, f. A tie is resolved in the ranking's
    favour: the top-2 is {a, c} (c ranks before b), the top-5 takes e (before f)."""
    truth = _frame([5.0, 3.0, 3.0, 1.0, 0.0, 0.0])  # a..f at positions 0..5
    ranking = _names([3, 2, 0, 4, 1, 5])
    got = recall_cost(ranking, truth, k=6, relaxed=0.5, estimation_cost=1.5)
    assert got["verified"].tolist() == [3, 3, 5, 5, 5, 6]
    assert got["verified_relaxed"].tolist() == [3, 2, 3, 2, 3, 3]
    assert got["target_relaxed"].tolist() == [1, 1, 2, 2, 3, 3]
    assert got["cost"].tolist() == [4.5, 4.5, 6.5, 6.5, 6.5, 7.5]
    assert (got["estimation"] == 1.5).all()


def test_relaxed_target_is_ceil_of_fraction_without_float_error():
    truth = _frame(np.arange(30, 0, -1.0))
    got = recall_cost(_names(range(30)), truth, k=30)
    assert got.set_index("k").loc[[1, 10, 20, 11], "target_relaxed"].tolist() == [1, 9, 18, 10]
    assert recall_cost(_names(range(30)), truth, k=5, relaxed=1.0)["cost_relaxed"].tolist() == [1, 2, 3, 4, 5]


def test_nan_scores_go_last_and_signed_effects_use_their_size():
    truth = _frame([-10.0, 5.0, 4.0])  # node 0 has the largest |effect|
    ranking = pd.DataFrame({"kind": "q", "layer": 0, "unit": 0, "pos": [0, 1, 2], "score": [np.nan, 9.0, 8.0]})
    got = recall_cost(ranking, truth, k=3)
    assert got["verified"].tolist() == [3, 3, 3]
    by_score = recall_cost(ranking, _frame([10.0, 5.0, 4.0], column="score"), k=3)
    assert by_score["verified"].tolist() == [3, 3, 3]


def test_random_rankings_match_plain_loops():
    rng = np.random.default_rng(1)
    for trial in range(20):
        n = int(rng.integers(1, 120))
        values = np.round(rng.exponential(size=n), 1)  # rounded: many ties
        order = rng.permutation(n)
        relaxed = [0.5, 0.9, 1.0, 0.33][trial % 4]
        got = recall_cost(_names(order), _frame(values), k=n, relaxed=relaxed)
        full, part = _naive(dict(zip(_names(range(n)), values)), _names(order), n, relaxed)
        assert got["verified"].tolist() == full and got["verified_relaxed"].tolist() == part


def test_scores_of_methods_against_acp_truth_with_absent_positions():
    """Pairs of different lengths: positions the short pair lacks exist for the long one; a Scores'
    NaN entries (none here for attention) would be ignored; every method's cost is a Cost."""
    model = tiny_model("llama")
    pairs = random_pairs(lengths=(6, 8))
    truth = atpstar.acp(model, pairs, kinds="attn", progress=False)
    n = len(truth.to_frame())
    assert recall_cost(truth, truth, k=n)["cost"].tolist() == list(range(1, n + 1))
    estimate = atpstar.atp(model, pairs, kinds="attn", progress=False)
    got = recall_cost(estimate, truth, k=50, estimation_cost=estimate)
    assert got["estimation"].iloc[0] == pytest.approx(Cost.of(estimate).per_pair()) and got["estimation"].iloc[0] > 2
    frame, true_frame = estimate.to_frame(), truth.to_frame()
    full, part = _naive(dict(zip(true_frame["name"], true_frame["effect"].abs())), frame["name"].tolist(), 50, 0.9)
    assert got["verified"].tolist() == full and got["verified_relaxed"].tolist() == part
    assert (recall_cost(frame, true_frame, k=50)["verified"] == got["verified"]).all()  # frames == Scores
    for name, method in atpstar.METHODS.items():
        scores = method(model, pairs, kinds="attn", progress=False)
        cost = scores.info["cost"]
        assert isinstance(cost, Cost) and cost.pairs == len(pairs), name
        curve = recall_cost(scores, truth, k=10, estimation_cost=scores)
        assert (curve["cost"] >= curve["k"] + curve["estimation"]).all(), name


def test_different_node_sets_and_bad_arguments_are_refused():
    truth = _frame([3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="the truth has 1 nodes the ranking lacks.*L0.q.H0@2"):
        recall_cost(_names([1, 0]), truth, k=2)
    with pytest.raises(ValueError, match="the ranking has 1 nodes the truth lacks.*L0.k.G0@0"):
        recall_cost(_names([1, 0, 2]) + ["L0.k.G0@0"], truth, k=2)
    scored = pd.DataFrame({"kind": ["q", "q", "q", "v"], "layer": 0, "unit": 0, "pos": [0, 1, 2, 0],
                           "score": [1.0, 2.0, 3.0, 0.5]})
    with pytest.raises(ValueError, match="different nodes"):
        recall_cost(scored, truth, k=2)
    # per kind: fine; a table is taken in its row order (not re-sorted by its score column)
    assert recall_cost(scored, truth, k=2, kinds="q")["verified"].tolist() == [1, 2]
    scored.loc[3, "score"] = np.nan  # NaN-scored and not in the truth: a node no pair has, ignored
    assert recall_cost(scored.iloc[::-1], truth, k=2)["verified"].tolist() == [3, 3]
    with pytest.raises(ValueError, match="more than once"):
        recall_cost(_names([0, 1, 2, 1]), truth, k=2)
    for bad_k in (0, 4, 1.5):
        with pytest.raises(ValueError, match="k must be an integer in 1..3"):
            recall_cost(_names([0, 1, 2]), truth, k=bad_k)
    for relaxed in (0, 1.5):
        with pytest.raises(ValueError, match="relaxed"):
            recall_cost(_names([0, 1, 2]), truth, k=2, relaxed=relaxed)
    with pytest.raises(ValueError, match="'effect'.*or 'score'"):
        recall_cost(_names([0, 1, 2]), truth.drop(columns="effect"), k=2)
    with pytest.raises(TypeError, match="truth must be exact effects"):
        recall_cost(_names([0, 1, 2]), _names([0, 1, 2]), k=2)
    with pytest.raises(ValueError, match=">= 0"):
        recall_cost(_names([0, 1, 2]), truth, k=2, estimation_cost=-1)
    with pytest.raises(TypeError, match="estimation_cost"):
        recall_cost(_names([0, 1, 2]), truth, k=2, estimation_cost="cheap")
    with pytest.raises(ValueError, match="cannot parse node name"):
        recall_cost(["L0.q.H0@0", "L0.attn.H0@1"], truth, k=2)


def test_a_million_nodes_is_vectorised():
    """~10^6 nodes (SmolLM2's neurons at 22 positions), k = 3000: several blocks of the relaxed target."""
    rng = np.random.default_rng(2)
    layer, unit, pos = (g.ravel() for g in np.meshgrid(np.arange(30), np.arange(1536), np.arange(22), indexing="ij"))
    effect = np.round(rng.standard_normal(len(layer)) * rng.random(len(layer)) ** 4, 3)  # heavy tail, ties
    truth = pd.DataFrame({"kind": "neuron", "layer": layer, "unit": unit, "pos": pos, "effect": effect})
    ranking = truth.assign(score=np.abs(effect) + rng.exponential(0.05, len(effect)))
    ranking = ranking.drop(columns="effect").sort_values("score", ascending=False)
    got = recall_cost(ranking, truth, k=3000, estimation_cost=Cost(forward=4.0, backward=2.0, pairs=2, backward_ratio=1.5))
    assert len(truth) > 10**6 and len(got) == 3000
    key = ["layer", "unit", "pos"]
    ranks = ranking[key].reset_index(drop=True).reset_index().rename(columns={"index": "rank"})
    top = truth.assign(size=truth["effect"].abs()).merge(ranks, on=key)
    top = top.sort_values(["size", "rank"], ascending=[False, True]).head(3000)
    seen, full, part = [], [], []
    for i, r in enumerate(top["rank"].tolist(), 1):
        bisect.insort(seen, r)
        full.append(seen[-1] + 1)
        part.append(seen[math.ceil(0.9 * i - 1e-9) - 1] + 1)
    assert got["verified"].tolist() == full and got["verified_relaxed"].tolist() == part
    assert (got["cost"] - got["verified"] == 3.5).all()  # (4 + 2 * 1.5) / 2 per pair
