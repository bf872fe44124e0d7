"""recall_cost on edges: the same numbers as for nodes of the same
ranking and truth, from edge tables, edge names and EdgeScores; mismatched edge sets are refused."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import atpstar
from atpstar.edges import EdgeGraph, EdgeScores
from atpstar.substrate.arch import ARCHS

NAMES = ["embed@0 -> L0.q.H0@0", "embed@1 -> L0.k.G0@1", "L0.head.H0@1 -> logits@1", "L0.mlp@2 -> logits@2",
         "embed@2 -> L0.mlp@2", "L0.head.H1@0 -> L0.mlp@0"]
TRUTH = [6.0, -5, 4, 3, -2, 1]       # exact effects: |.| decreasing in NAMES order
ESTIMATE = [4.0, 6, 1, 5, 3, 2]      # the method ranks them 3rd, 1st, 6th, 2nd, 4th, 5th


def test_edge_recall_equals_node_recall_of_the_same_ranking():
    nodes = pd.DataFrame({"kind": "head", "layer": 0, "unit": np.arange(6), "pos": 0})
    node_cost = atpstar.recall_cost(nodes.assign(score=ESTIMATE).sort_values("score", ascending=False),
                                    nodes.assign(effect=TRUTH), 3, estimation_cost=2.5)
    ranking = pd.DataFrame({"name": NAMES, "score": ESTIMATE}).sort_values("score", ascending=False)
    truth = pd.DataFrame({"name": NAMES, "effect_exact": TRUTH})
    edge_cost = atpstar.recall_cost(ranking, truth, 3, estimation_cost=2.5)
    pd.testing.assert_frame_equal(edge_cost, node_cost)
    np.testing.assert_allclose(edge_cost["cost"], [2.5 + 3, 2.5 + 3, 2.5 + 6])
    by_names = atpstar.recall_cost(ranking["name"].tolist(), truth, 3)
    np.testing.assert_array_equal(by_names["verified"], [3, 3, 6])


def test_edge_recall_from_edge_scores():
    model = SimpleNamespace(name="m", n_layers=1, n_heads=2, n_kv_heads=1, arch=ARCHS["llama"])
    graph = EdgeGraph.of(model)
    rng = np.random.default_rng(0)
    truth_effect = torch.tensor(rng.normal(size=(graph.n_writers, graph.n_readers, 2)))
    truth_effect[~graph.valid] = torch.nan
    truth = EdgeScores("acp", graph, truth_effect, truth_effect.abs(), 1)
    oracle = atpstar.recall_cost(truth, truth, 5)
    np.testing.assert_array_equal(oracle["verified"], np.arange(1, 6))  # ranking by the truth: cost k
    reverse = EdgeScores("worst", graph, truth_effect, 1 / truth_effect.abs(), 1)
    n = int(graph.valid.sum()) * 2
    assert atpstar.recall_cost(reverse, truth.to_frame(), 1)["verified"].tolist() == [n]


def test_edge_sets_must_match():
    ranking = pd.DataFrame({"name": NAMES[:5], "score": ESTIMATE[:5]})
    with pytest.raises(ValueError, match="the truth has 1 edges the ranking lacks"):
        atpstar.recall_cost(ranking, pd.DataFrame({"name": NAMES, "effect": TRUTH}), 2)
    with pytest.raises(ValueError, match="the ranking has 1 edges the truth lacks"):
        atpstar.recall_cost(pd.DataFrame({"name": NAMES, "score": ESTIMATE}),
                            pd.DataFrame({"name": NAMES[:5], "effect": TRUTH[:5]}), 2)
    with pytest.raises(ValueError, match="more than once"):
        atpstar.recall_cost(NAMES + NAMES[:1], pd.DataFrame({"name": NAMES, "effect": TRUTH}), 2)
    with pytest.raises(ValueError, match="no kinds"):
        atpstar.recall_cost(NAMES, pd.DataFrame({"name": NAMES, "effect": TRUTH}), 2, kinds="q")
