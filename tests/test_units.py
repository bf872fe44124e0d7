"""One verification for every unit kind (atpstar.units): nodes and edges go through the same loop, with the
same budgets, stop rules, checkpoints and costs, and give the numbers the two separate loops gave before
they were merged (``data/verification_before.pt``: recorded from the code before, on the tiny model of
every architecture)."""

from pathlib import Path

import numpy as np
import pytest
import torch

import atpstar
from atpstar.edges import EdgeGraph, EdgeScores, EdgeSet, edge_acp
from atpstar.edges.units import EdgeUnits
from atpstar.metrics import resolve
from atpstar.substrate.node_units import NodeUnits
from atpstar.units import UnitPatcher, Units, bind
from conftest import ARCH_NAMES, planted_edge_scores, random_pairs, tiny_model

BEFORE = torch.load(Path(__file__).parent / "data" / "verification_before.pt", weights_only=False)


def edge_ranking(model, n_pos, seed=0):
    """A planted edge ranking (random scores over every edge), the one the recorded values used."""
    return planted_edge_scores(model, n_pos, seed)


NODE_CASES = {"nodes": dict(budget=atpstar.Budget(nodes=40)), "forward": dict(budget=12.5),
              "stop": dict(stop=atpstar.SmallEffects(window=5, relative=0.05), budget=atpstar.Budget(nodes=300))}


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_node_and_edge_verification_give_the_numbers_of_before(arch):
    model, pairs = tiny_model(arch), random_pairs()
    before = BEFORE[arch]
    scores = atpstar.atp(model, pairs, progress=False)
    for case, kw in NODE_CASES.items():  # nodes: bit-identical
        v, old = atpstar.verify(model, pairs, scores, progress=False, **kw), before[case]
        assert (len(v), v.stop_index, v.stopped, v.cost.forward) == (old["n"], old["stop_index"], old["stopped"], old["forward"])
        assert v.to_frame()["name"].tolist() == old["names"]
        assert torch.equal(v.per_pair.nan_to_num(7.0), old["per_pair"].nan_to_num(7.0))
        assert torch.equal(v.node_cost, old["cost"])
    edges = edge_ranking(model, pairs.max_len)
    v, old = atpstar.verify(model, pairs, edges, budget=atpstar.Budget(nodes=20), chunk=4, progress=False), before["edges"]
    assert (len(v), v.stop_index, v.stopped) == (old["n"], old["stop_index"], old["stopped"])
    assert v.to_frame()["name"].tolist() == old["names"]
    assert torch.equal(v.per_pair.nan_to_num(7.0), old["per_pair"].nan_to_num(7.0))
    assert v.cost.forward == pytest.approx(old["forward"], rel=1e-12)
    # a stop rule: the same exact point; the rest of the chunk it fired in, already paid for, is now kept
    rule = atpstar.SmallEffects(window=3, relative=0.5)
    v, old = atpstar.verify(model, pairs, edges, stop=rule, budget=atpstar.Budget(nodes=60), chunk=4, progress=False), \
        before["edges_stop"]
    n = old["stop_index"]
    assert (v.stop_index, v.stopped) == (n, old["stopped"]) and len(v) == -(-n // 4) * 4
    assert v.to_frame()["name"].tolist()[:n] == old["names"]
    assert torch.equal(v.per_pair[:n].nan_to_num(7.0), old["per_pair"].nan_to_num(7.0))


def test_both_kinds_implement_the_protocol():
    model, pairs = tiny_model("gpt2"), random_pairs()
    for unit in (NodeUnits(model, pairs), EdgeUnits(model, pairs)):
        assert isinstance(unit, Units)
        every = unit.universe()
        ids = unit.ids(every)
        assert len(ids.unique()) == len(every)
        back = unit.from_ids(ids)
        assert torch.equal(unit.ids(back), ids)
        some = every.take(torch.arange(0, len(every), max(1, len(every) // 17)))
        assert torch.equal(unit.ids(unit.parse(unit.names(some))), unit.ids(some))  # names <-> parse
        assert torch.equal(unit.presence(some), pairs.presence(some.pos))
        patcher = unit.patcher(resolve(None, pairs), some, None, 1024)
        assert isinstance(patcher, UnitPatcher)
        static = patcher.static(some)
        single = patcher.run(some, patcher.plan(some))[0]
        assert (single[static].nan_to_num(0.0) == 0).all()  # a unit that cannot change has effect exactly 0
        assert single[~static].nan_to_num(0.0).abs().sum() > 0
        sets = torch.zeros(2, len(some), dtype=torch.bool)
        big = int(single.nan_to_num(0.0).abs().sum(1).argmax())
        sets[0, big] = True
        joint = patcher.joint(some, sets)
        np.testing.assert_allclose(joint[0], single[big].nan_to_num(0.0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(joint[1], 0.0, atol=1e-5)  # the empty set (float32 noise of a clean rerun)


def test_scores_name_their_unit_kind_and_verification_dispatches_on_it():
    model, pairs = tiny_model("llama"), random_pairs()
    assert atpstar.Scores.unit_kind == "node" and EdgeScores.unit_kind == "edge"
    edges = edge_ranking(model, pairs.max_len)
    assert isinstance(bind(model, pairs, edges), EdgeUnits)
    assert isinstance(bind(model, pairs, ["L0.q.H1@3"]), NodeUnits)
    names = edges.to_frame(top=5)["name"].tolist()
    assert isinstance(bind(model, pairs, names), EdgeUnits)
    v = atpstar.verify(model, pairs, names, progress=False)  # edge names in ranked order
    assert v.stopped == "exhausted" and v.to_frame()["name"].tolist() == names
    exact = edge_acp(model, pairs, names).to_frame().set_index("name")["effect"]
    np.testing.assert_allclose(v.to_frame()["effect_exact"], exact.loc[names], rtol=1e-4, atol=2e-5)
    assert v.edges is v.nodes and v.graph is v.unit.graph
    with pytest.raises(AttributeError, match="verification of nodes, not of edges"):
        atpstar.verify(model, pairs, ["L0.q.H1@3"], progress=False).edges


def test_an_edge_forward_budget_is_fit_exactly_and_counts_the_captures():
    model, pairs = tiny_model("llama"), random_pairs()
    edges = edge_ranking(model, pairs.max_len, seed=1)
    v = atpstar.verify(model, pairs, edges, budget=10.0, chunk=6, progress=False)
    assert v.stopped == "budget" and v.cost.per_pair() <= 10.0
    more = atpstar.verify(model, pairs, edges, budget=atpstar.Budget(nodes=len(v) + 1), chunk=6, progress=False)
    assert more.cost.per_pair() > 10.0  # the next edge would not have fit
    np.testing.assert_allclose(more.per_pair[:len(v)], v.per_pair, rtol=1e-5, atol=1e-6)  # float32, other batches


def test_an_edge_checkpoint_resumes_without_patching_again(tmp_path):
    model, pairs = tiny_model("gemma3"), random_pairs()
    edges = edge_ranking(model, pairs.max_len, seed=3)
    ckpt = tmp_path / "edges.ckpt"
    first = atpstar.verify(model, pairs, edges, budget=atpstar.Budget(nodes=12), chunk=4, checkpoint=ckpt, progress=False)
    again = atpstar.verify(model, pairs, edges, budget=atpstar.Budget(nodes=20), chunk=4, checkpoint=ckpt, progress=False)
    assert (first.patched, again.reused, again.patched) == (12, 12, 8)
    plain = atpstar.verify(model, pairs, edges, budget=atpstar.Budget(nodes=20), chunk=4, progress=False)
    assert torch.equal(again.per_pair.nan_to_num(7.0), plain.per_pair.nan_to_num(7.0))
    assert again.cost.forward == pytest.approx(plain.cost.forward, rel=1e-12)
    # the same file is refused for nodes: a node checkpoint and an edge checkpoint never mix
    with pytest.raises(ValueError, match="different run"):
        atpstar.verify(model, pairs, atpstar.atp(model, pairs, progress=False), budget=atpstar.Budget(nodes=3),
                       checkpoint=ckpt, progress=False)
    prior = atpstar.verify(model, pairs, edges, budget=atpstar.Budget(nodes=24), chunk=4, prior=again, progress=False)
    assert (prior.reused, prior.patched) == (20, 4)


def test_an_edge_set_is_a_ranking_in_the_given_order():
    model, pairs = tiny_model("gpt_neox"), random_pairs()
    graph = EdgeGraph.of(model)
    some = EdgeSet.every(graph, pairs.max_len).take(torch.tensor([40, 3, 17]))
    v = atpstar.verify(model, pairs, some, progress=False)
    assert torch.equal(v.edges.ids(graph, pairs.max_len), some.ids(graph, pairs.max_len))
    assert v.score.isnan().all()
