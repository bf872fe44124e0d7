"""Bad input to the steps written once over unit kinds (verification, the diagnostic, recall_cost): nodes and
edges are never mixed silently, edge budgets are checked as node budgets are, and an unbounded verification
of many units says what it is about to do before it starts."""

import warnings

import pytest

import atpstar
from atpstar.diagnostics.edges import diagnose_edges
from atpstar.verification import loop
from conftest import planted_edge_scores, random_pairs, tiny_model


@pytest.fixture(scope="module")
def run():
    model, pairs = tiny_model("gpt2"), random_pairs()
    edges = planted_edge_scores(model, pairs.max_len)
    nodes = atpstar.atp(model, pairs, progress=False)
    few = atpstar.Budget(nodes=4)
    return model, pairs, nodes, edges, atpstar.verify(model, pairs, nodes, budget=few, progress=False), \
        atpstar.verify(model, pairs, edges, budget=few, progress=False)


@pytest.mark.parametrize("budget, error, message", [
    (-1, ValueError, r"Budget forward must be a positive number, got -1; e.g. budget=atpstar.Budget\(forward=50\)"),
    ("lots", TypeError, r"budget must be a Budget, a number .* got str 'lots'; e.g. budget=atpstar.Budget\(nodes=100\)"),
    (atpstar.Budget(forward=3.5), ValueError, r"forward=3.5 per pair cannot pay for the captures every edge patch "
                                              r"builds on \(4 forward passes per pair\)"),
])
def test_edge_budgets_are_checked_as_node_budgets_are(run, budget, error, message):
    model, pairs, nodes, edges, *_ = run
    with pytest.raises(error, match=message):
        atpstar.verify(model, pairs, edges, budget=budget, progress=False)
    if not isinstance(budget, atpstar.Budget):  # the same words for nodes
        with pytest.raises(error, match=message):
            atpstar.verify(model, pairs, nodes, budget=budget, progress=False)


def test_a_prior_of_the_other_unit_kind_is_a_type_error(run):
    model, pairs, nodes, edges, v_nodes, v_edges = run
    with pytest.raises(TypeError, match="prior is a verification of nodes, but this ranking is of edges"):
        atpstar.verify(model, pairs, edges, prior=v_nodes, budget=atpstar.Budget(nodes=5), progress=False)
    with pytest.raises(TypeError, match="prior is a verification of edges, but this ranking is of nodes"):
        atpstar.verify(model, pairs, nodes, prior=v_edges, budget=atpstar.Budget(nodes=5), progress=False)


def test_the_diagnostic_follows_the_verified_units_and_refuses_mixed_ones(run):
    model, pairs, nodes, edges, v_nodes, v_edges = run
    found = atpstar.diagnose(model, pairs, v_edges, estimates=edges, samples=40, bound="normal", progress=False)
    same = diagnose_edges(model, pairs, v_edges, estimates=edges, samples=40, bound="normal", progress=False)
    assert type(found).__name__ == "EdgeDiagnosis" and found.theta == same.theta and found.n_verified == 4
    with pytest.raises(TypeError, match="verified is a Verification of nodes, not of edges: bound what a node "
                                        "verification left with atpstar.diagnose"):
        diagnose_edges(model, pairs, v_nodes, samples=40, bound="normal")
    with pytest.raises(TypeError, match=r"estimates must be a Scores .* got EdgeScores \(edge estimates"):
        atpstar.diagnose(model, pairs, v_nodes, estimates=edges, samples=40, bound="normal")
    with pytest.raises(TypeError, match="estimates must be an EdgeScores, .* got Scores"):
        atpstar.diagnose(model, pairs, v_edges, estimates=nodes, samples=40, bound="normal")
    with pytest.raises(ValueError, match="kinds= selects node kinds, but these units are edges: pass edges="):
        atpstar.diagnose(model, pairs, v_edges, kinds="head", samples=40, bound="normal")
    with pytest.raises(ValueError, match="edges= and graph= are for an edge diagnostic"):
        atpstar.diagnose(model, pairs, v_nodes, edges=["embed@0 -> logits@0"], samples=40, bound="normal")


def test_recall_of_a_ranking_against_a_truth_of_the_other_unit_kind_is_a_type_error(run):
    *_, nodes, edges, v_nodes, v_edges = run
    with pytest.raises(TypeError, match=r"the ranking \(EdgeScores\) is of edges but the truth \(Verification\) is "
                                        r"of nodes: rank and measure the same units"):
        atpstar.recall_cost(edges, v_nodes, 2)
    with pytest.raises(TypeError, match=r"the ranking \(Scores\) is of nodes but the truth \(Verification\) is of edges"):
        atpstar.recall_cost(nodes, v_edges, 2)
    # an edge verification is a truth like any other: the verified edges' own order costs k for the top k
    table = v_edges.to_frame()
    order = table.reindex(table["effect_exact"].abs().sort_values(ascending=False).index)["name"].tolist()
    assert atpstar.recall_cost(order, v_edges, 4)["verified"].tolist() == [1, 2, 3, 4]


def test_an_unbounded_verification_of_many_units_says_what_it_will_do_first(run, monkeypatch):
    model, pairs, nodes, edges, *_ = run
    monkeypatch.setattr(loop, "LARGE", 100)  # the tiny model has a few thousand edges, SmolLM2 about a million
    n = int(edges.score.isfinite().sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning comes before any patch: raised, nothing is verified
        with pytest.raises(UserWarning, match=rf"verifying every one of the {n:,} ranked edges \(no budget and no stop "
                                              rf"rule\): up to {n * len(pairs):,} patched forward passes .* hours at "
                                              r"the captures' speed .* Pass budget=atpstar.Budget\(nodes=...\)"):
            atpstar.verify(model, pairs, edges, progress=False)
        atpstar.verify(model, pairs, edges, budget=atpstar.Budget(nodes=200), progress=False)  # bounded: silent
        atpstar.verify(model, pairs, nodes, stop=atpstar.SmallEffects(window=5, relative=0.5), progress=False)
