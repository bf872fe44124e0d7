"""Bad input to the edge API, as a new user would give it: each fails with a message that names the
culprit and says what to pass instead (never a raw torch, pandas or attribute error)."""

import pytest
import torch
from conftest import random_pairs, tiny_model

import atpstar
from atpstar.edges import EdgeGraph, EdgePatcher, EdgeScores, EdgeSet, atp, edge_acp, subsampling
from atpstar.edges.scores import COLUMNS


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def test_one_edge_name_where_names_are_expected_says_wrap_it_in_a_list(llama):
    graph = EdgeGraph.of(llama)
    name = "embed@1 -> L0.mlp@1"
    for call in (lambda: EdgeSet.from_names(graph, name), lambda: EdgeSet.parse(graph, name)):
        with pytest.raises(TypeError, match=r"single edge name 'embed@1 -> L0.mlp@1': wrap it in a list, "
                                            r"e.g. \['embed@1 -> L0.mlp@1'\]"):
            call()
    assert EdgeSet.from_names(graph, [name]).names(graph) == [name]  # the list form is the one edge


@pytest.mark.parametrize("call", [
    lambda m, p, g: atp(m, p, graph=g),
    lambda m, p, g: edge_acp(m, p, edges=["embed@1 -> L0.mlp@1"], graph=g),
    lambda m, p, g: EdgePatcher(m, p, graph=g),
    lambda m, p, g: subsampling(m, p, edges=["embed@1 -> L0.mlp@1"], samples=2, graph=g),
], ids=["atp", "edge_acp", "EdgePatcher", "subsampling"])
def test_a_graph_that_is_not_an_edge_graph_says_what_to_pass(llama, call):
    with pytest.raises(TypeError, match=r"graph must be an EdgeGraph of the model, e.g. "
                                        r"graph=atpstar.EdgeGraph.of\(model\) \(or None.*got str 'x'"):
        call(llama, random_pairs(), "x")


def test_the_graph_of_another_model_is_refused(llama):
    other = EdgeGraph.of(tiny_model("gpt2"))  # 4 heads, no GQA: not this llama's 6 heads and 2 kv heads
    with pytest.raises(ValueError, match=r"built for another model \(3 layers, 4 heads, 4 kv heads; .* has 3, 6, 2\)"
                                         r".*EdgeGraph.of\(model\) or None"):
        atp(llama, random_pairs(), graph=other)


def _scores(graph, n_pos=3):
    gen = torch.Generator().manual_seed(0)
    effect = torch.randn(graph.n_writers, graph.n_readers, n_pos, generator=gen).masked_fill(~graph.valid[..., None],
                                                                                             torch.nan)
    return EdgeScores("test", graph, effect, effect.abs(), 1)


def test_top_of_a_negative_or_fractional_count_says_what_to_pass(llama):
    scores = _scores(EdgeGraph.of(llama))
    for call, what in ((lambda: scores.top(-3), "k=-3"), (lambda: scores.top(2.5), "k=2.5"),
                       (lambda: scores.edges(-1), "k=-1"), (lambda: scores.to_frame(top=-1), "top=-1")):
        with pytest.raises(ValueError, match=rf"{what}: pass the number of best units to keep, an integer >= 0"):
            call()
    empty = scores.top(0)  # the 0 best edges: an empty table with the usual columns
    assert len(empty) == 0 and list(empty.columns) == list(COLUMNS) and len(scores.edges(0)) == 0
    assert scores.top(3)["name"].tolist() == scores.to_frame()["name"].head(3).tolist()


def test_node_top_refuses_a_negative_count_too(llama):
    scores = atpstar.acp(llama, random_pairs(), kinds="head", progress=False)
    with pytest.raises(ValueError, match=r"k=-3: pass the number of best units to keep, an integer >= 0"):
        scores.top(-3)  # pandas' head(-3) would silently drop the last three rows instead
    assert len(scores.top(0)) == 0 and len(scores.top(4)) == 4
