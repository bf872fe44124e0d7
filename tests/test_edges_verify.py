"""atpstar.verify on edges: the top of an edge ranking, best first, verified by exact edge patching (the same numbers
as edge_acp of those edges), within a budget of edges / forward passes, stopped by the node pipeline's
stop rules; recall_cost of the ranking against the exact truth."""

import numpy as np

import atpstar
from atpstar.edges.patching import edge_acp
from conftest import planted_edge_scores, random_pairs, tiny_model


def test_verified_edges_are_the_top_of_the_ranking_with_exact_effects():
    model, pairs = tiny_model("llama"), random_pairs()
    scores = planted_edge_scores(model, pairs.max_len)
    v = atpstar.verify(model, pairs, scores, budget=atpstar.Budget(nodes=10), chunk=4)
    assert len(v) == 10 and v.stopped == "budget"
    frame = v.to_frame()
    assert frame["name"].tolist() == scores.to_frame(top=10)["name"].tolist()
    assert frame["rank"].tolist() == list(range(1, 11))
    exact = edge_acp(model, pairs, frame["name"].tolist())
    truth = exact.to_frame().set_index("name")["effect"]
    np.testing.assert_allclose(frame["effect_exact"], truth.loc[frame["name"]].to_numpy(), rtol=1e-4, atol=2e-5)  # float32, other batches
    np.testing.assert_allclose(frame["effect"], scores.to_frame(top=10)["effect"])
    assert v.cost.forward > 0 and v.cost.pairs == len(pairs)


def test_stop_rule_and_forward_budget():
    model, pairs = tiny_model("llama"), random_pairs()
    scores = planted_edge_scores(model, pairs.max_len, seed=1)
    huge = atpstar.SmallEffects(window=3, threshold=1e9)  # every effect is small: fires after 3 edges
    v = atpstar.verify(model, pairs, scores, stop=huge, chunk=5)
    assert len(v) == 5 and v.stop_index == 3 and v.stopped.startswith("small effects")  # the paid chunk is kept
    v = atpstar.verify(model, pairs, scores, budget=atpstar.Budget(forward=10.0), chunk=2)
    # 4 capture passes per pair, then at most 1 per edge (less: patches skip layers and positions)
    assert v.stopped == "budget" and 6 <= len(v) < len(scores.ranked_ids())
    assert v.cost.per_pair() <= 10.0


def test_recall_cost_of_an_edge_ranking_against_exact_patching():
    model, pairs = tiny_model("llama"), random_pairs(lengths=(5,))
    scores = planted_edge_scores(model, pairs.max_len, seed=2)
    names = scores.to_frame(top=40)["name"].tolist()
    truth = edge_acp(model, pairs, names).to_frame()
    curve = atpstar.recall_cost(scores.to_frame(top=40), truth, 5, estimation_cost=3.0)
    order = truth.sort_values("score", ascending=False, kind="stable")["name"].head(5)
    ranks = [names.index(n) + 1 for n in order]
    np.testing.assert_array_equal(curve["verified"], np.maximum.accumulate(ranks))
    np.testing.assert_allclose(curve["cost"], 3.0 + np.maximum.accumulate(ranks))


def test_a_stop_rules_own_time_is_not_verification_time():
    """A stop rule's work (ThetaBelow patches its subsets inside the loop) is neither in the verification's
    seconds nor in its seconds budget: a rule that sleeps 0.4 s per check leaves both well under the sleeps."""
    import time

    model, pairs = tiny_model("llama"), random_pairs()
    scores = planted_edge_scores(model, pairs.max_len)
    calls = []

    def slow(state):
        calls.append(len(state.nodes))
        time.sleep(0.4)
        return "enough" if len(calls) % 4 == 0 else None

    v = atpstar.verify(model, pairs, scores, budget=atpstar.Budget(nodes=12), stop=slow, chunk=4)
    assert calls == [4, 8, 12] and len(v) == 12
    assert v.cost.seconds < 0.4 * len(calls) - 0.3
    calls.clear()
    timed = atpstar.verify(model, pairs, scores, budget=atpstar.Budget(seconds=0.5), stop=slow, chunk=4)
    assert timed.stopped == "enough" and calls == [4, 8, 12, 16] and len(timed) == 16  # the rule's 0.4 s per chunk used up no budget
