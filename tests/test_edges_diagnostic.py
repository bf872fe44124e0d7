"""The false-negative diagnostic on edges, checked against exact edge effects.

The model is a float64 tiny Llama that is linear after the last layer's value readers and the
logits reader (tests/test_edges_atp.py::_linear_llama), so over the edges into those readers a
joint patch is exactly the sum of the single-edge effects (assumption A holds) and ``edge_acp``
gives every true c(e). Pairs of two lengths: edges at the first positions exist in one pair only
(presence q = 1/2).

Calibration tolerance as in tests/test_diagnostic.py: a bound promising failure ≤ δ may fail k times
in n seeds with k ≤ nδ + 3·sqrt(nδ(1 − δ))."""

import json
import math

import pytest
import torch
from conftest import random_pairs
from test_edges_atp import _linear_llama

import atpstar
from atpstar import Budget
from atpstar.diagnostics import EdgeDiagnosis, diagnose_edges
from atpstar.diagnostics.bound import SubsetSums, memberships, node_stats
from atpstar.edges import EdgeGraph, EdgeSet, edge_acp
from atpstar.edges.atp import atp as edge_atp


def allowed_failures(n: int, delta: float) -> float:
    return n * delta + 3 * math.sqrt(n * delta * (1 - delta))


_CASE = {}


def linear_case():
    """(model, pairs, graph, edges into the linear readers, their exact mean effects (N,) float64)."""
    if not _CASE:
        model = _linear_llama()
        pairs = random_pairs(lengths=(6, 8), seed=3)
        graph = EdgeGraph.of(model)
        every = EdgeSet.every(graph, pairs.max_len)
        kind, layer = graph.reader_kind[every.reader], graph.reader_layer[every.reader]
        edges = every.take((kind == 4) | ((layer == 2) & (kind == 2)))  # logits, and the last layer's values
        truth = edge_acp(model, pairs, edges)
        _CASE.update(model=model, pairs=pairs, graph=graph, edges=edges, truth=truth)
    c = _CASE["truth"].effect
    return _CASE["model"], _CASE["pairs"], _CASE["graph"], _CASE["edges"], c


def exact(c, edges: EdgeSet):
    return c[edges.writer, edges.reader, edges.pos].double().nan_to_num()


def top_edges(c, edges: EdgeSet, k: int, skip=()) -> EdgeSet:
    """The k edges of largest |c| (those at indices ``skip`` left out)."""
    order = [int(i) for i in exact(c, edges).abs().argsort(descending=True) if int(i) not in set(skip)]
    return edges.take(torch.tensor(order[:k]))


def test_subsets_add_up_and_the_estimate_is_unbiased():
    """Real joint patches equal Σ q c over their members (to 1e-9); with many subsets every ĉ(e) is within
    its simultaneous interval of the exact c(e), the z-scores are centred with unit spread, and ĉ
    approaches c as J grows."""
    model, pairs, graph, edges, c = linear_case()
    verified = top_edges(c, edges, 5)
    d = diagnose_edges(model, pairs, verified, edges=edges, samples=2000, p=0.1, seed=1, progress=False)
    assert isinstance(d, EdgeDiagnosis) and d.n_verified == 5
    assert d.n_static > 0 and d.n_static + len(d.nodes) == len(edges) - 5  # static edges: effect exactly 0
    truth = exact(c, d.nodes)
    members = memberships(len(d.nodes), 0.1, 1, 0, 2000)
    presence = d.design.presence
    assert set(presence.tolist()) == {0.5, 1.0}  # positions 0, 1 exist in the longer pair only
    torch.testing.assert_close(d.design.subset_mean, members.double() @ (truth * presence), atol=1e-9, rtol=0)
    s = d.stats
    f = s.multiplier(d.delta)
    assert bool(((s.effect - truth).abs() <= f * s.se).all())
    z = (s.effect - truth) / s.se
    assert abs(float(z.mean())) < 0.25 and 0.75 < float(z.std()) < 1.25
    small = diagnose_edges(model, pairs, verified, edges=edges, samples=250, p=0.1, seed=1, progress=False)
    err_small = float((small.stats.effect - truth).abs().max())
    err_large = float((s.effect - truth).abs().max())
    assert err_large < 0.6 * err_small  # ~ 1/sqrt(8) expected
    assert err_large < 0.35 * float(truth.abs().max())


def test_theta_covers_the_largest_unverified_edge_over_seeds():
    """100 seeds at δ = 0.05, J = 400, p = 0.1: θ ≥ the true largest unverified |c(e)| at the promised rate.
    The subsets' values are simulated from the exact edge effects (y_j = Σ q c, what the real patches give
    here to 1e-9, checked on three seeds), so the many seeds cost no forward pass."""
    model, pairs, graph, edges, c = linear_case()
    verified = top_edges(c, edges, 8)
    delta, n, samples, p = 0.05, 100, 400, 0.1
    real = [diagnose_edges(model, pairs, verified, edges=edges, samples=samples, p=p, seed=s, delta=delta,
                           progress=False) for s in range(3)]
    units = real[0].nodes
    truth, presence = exact(c, units), real[0].design.presence
    largest = float(truth.abs().max())
    assert largest > 0.2 * float(exact(c, edges).abs().max())  # something sizeable is left to find
    fails = 0
    for seed in range(n):
        members = memberships(len(units), p, seed, 0, samples)
        sums = SubsetSums(len(units))
        sums.add(members, members.double() @ (truth * presence))
        stats = node_stats(sums, p, None, "subgaussian", scale=1 / presence)
        if seed < len(real):  # the simulation is the real diagnostic
            assert stats.theta(delta) == pytest.approx(real[seed].theta, rel=1e-6)
            assert real[seed].theta >= largest
        fails += stats.theta(delta) < largest
    assert fails <= allowed_failures(n, delta)


def test_planted_edge_is_the_top_suspect():
    """A head's output made 30x larger: its edge into the logits at the last position is by far the largest.
    Verifying the next largest edges leaves it out; the diagnostic names it first and θ ≥ its effect.
    Verified too, θ falls below half of it."""
    model = _linear_llama()
    with torch.no_grad():
        w = model.layers[1].self_attn.o_proj.weight  # (d, H·D): head 3's slice
        w[:, 3 * model.d_head:4 * model.d_head] *= 30.0
    pairs = random_pairs(lengths=(6, 8), seed=3)
    planted = "L1.head.H3@7 -> logits@7"
    graph = EdgeGraph.of(model)
    edges = EdgeSet.from_names(graph, [f"{w_}@{t} -> logits@{t}" for w_ in graph.writer_names for t in range(8)])
    c = edge_acp(model, pairs, edges).effect
    values = exact(c, edges)
    where = edges.names(graph).index(planted)
    c_planted = float(values[where].abs())
    rest = values.abs().clone()
    rest[where] = 0
    others = rest.argsort(descending=True)
    assert c_planted > 3 * float(rest[others[10]])  # by far the largest once the other big ones are verified
    verified = edges.take(others[:10])
    d = diagnose_edges(model, pairs, verified, edges=edges, samples=600, p=0.1, progress=False)
    top = d.suspects.iloc[0]
    assert top["name"] == planted and top["writer"] == "L1.head.H3" and top["reader"] == "logits" and top["pos"] == 7
    assert d.theta >= c_planted and abs(top["z"]) > 5
    assert d.prob_exceeds(0.5 * c_planted) == 1.0
    done = verified.cat(edges.take(torch.tensor([where])))
    after = diagnose_edges(model, pairs, done, edges=edges, samples=600, p=0.1, progress=False)
    assert after.theta < 0.5 * c_planted


def test_exact_estimates_leave_no_variance():
    """Edge AtP is exact on these edges (linear after the readers): subtracting it leaves y_j = 0 for every
    subset, and θ is the largest unverified |estimate|, the true largest unverified |c|."""
    model, pairs, graph, edges, c = linear_case()
    estimates = edge_atp(model, pairs, qk_fix=False, graddrop=False, graph=graph)
    verified = top_edges(c, edges, 5)
    d = diagnose_edges(model, pairs, verified, estimates=estimates, edges=edges, samples=200, p=0.1, progress=False)
    scale = float(exact(c, edges).abs().max())
    assert d.stats.variance < 1e-12 * scale**2
    largest = float(exact(c, d.nodes).abs().max())
    assert d.theta == pytest.approx(largest, rel=1e-4)
    assert d.estimates == estimates.method and "estimates" in d.statement


def test_resume_from_checkpoint(tmp_path):
    model, pairs, graph, edges, c = linear_case()
    verified = top_edges(c, edges, 5)
    path = tmp_path / "edges.ckpt"
    run = lambda **kw: diagnose_edges(model, pairs, verified, edges=edges, p=0.1, progress=False, **kw)  # noqa: E731
    capture = 4.0 * len(pairs)  # clean and noise writes
    first = run(samples=300, checkpoint=path)
    again = run(samples=600, checkpoint=path)
    fresh = run(samples=600)
    assert first.resumed == 0 and again.resumed == 300
    assert again.cost.forward - capture == pytest.approx((fresh.cost.forward - capture) / 2, rel=0.25)
    assert again.theta == pytest.approx(fresh.theta, rel=1e-12)
    torch.testing.assert_close(again.subset_effects, fresh.subset_effects, rtol=0, atol=1e-9)  # batching order only
    done = run(samples=600, checkpoint=path)  # every subset finished: no patch at all
    assert done.resumed == 600 and done.cost.forward == capture and done.theta == fresh.theta
    with pytest.raises(ValueError, match="different diagnostic"):
        run(samples=600, seed=1, checkpoint=path)
    with pytest.raises(ValueError, match="different diagnostic"):
        diagnose_edges(model, pairs, verified, edges=edges.take(slice(0, 200)), p=0.1, samples=300,
                       checkpoint=path, progress=False)


def test_edge_verification_is_the_universe_and_rebound():
    """An EdgeVerification: its ranking is the universe, its edges the verified ones; re-bounding after
    verifying more needs no new patch; the result reads back as plain JSON."""
    model, pairs, graph, edges, c = linear_case()
    scores = edge_atp(model, pairs, qk_fix=False, graddrop=False, graph=graph)
    v = atpstar.verify(model, pairs, scores, budget=Budget(nodes=6))
    assert len(v.ranking) == graph.n_edges(pairs.max_len)
    d = diagnose_edges(model, pairs, v, edges=edges, samples=300, p=0.1, progress=False)
    inside = torch.isin(v.edges.ids(graph, pairs.max_len), edges.ids(graph, pairs.max_len))
    assert d.n_verified == int(inside.sum())
    more = atpstar.verify(model, pairs, scores, budget=Budget(nodes=40))
    again = d.rebound(more)
    assert again.cost.forward == d.cost.forward and again.n_verified > d.n_verified
    assert len(again.nodes) < len(d.nodes)
    out = json.loads(json.dumps(d.to_dict()))
    assert out["units"] == "edges" and out["suspects"][0]["name"] == d.suspects["name"].iloc[0]
    assert " -> " in out["suspects"][0]["name"] and "unverified edge" in out["statement"]
    assert set(out["readers"]) <= {"v", "logits"}


def test_bad_input_is_refused():
    model, pairs, graph, edges, c = linear_case()
    with pytest.raises(ValueError, match="no unverified edge"):
        diagnose_edges(model, pairs, edges, edges=edges, progress=False)
    nodes = atpstar.atp(model, pairs, kinds="head", qk_fix=False, graddrop=False, progress=False)
    with pytest.raises(TypeError, match=r"must be an EdgeScores.*atpstar\.edges\.atp.*Scores"):
        diagnose_edges(model, pairs, None, estimates=nodes, edges=edges, progress=False)
    other = random_pairs(lengths=(5,), seed=3)
    wrong = edge_atp(model, other, qk_fix=False, graddrop=False, graph=graph)
    with pytest.raises(ValueError, match="shape"):
        diagnose_edges(model, pairs, None, estimates=wrong, edges=edges, progress=False)
    v = atpstar.verify(model, other, wrong, budget=Budget(nodes=3))
    with pytest.raises(ValueError, match="different run"):
        diagnose_edges(model, pairs, v, progress=False)
    with pytest.raises(ValueError, match="too few"):
        diagnose_edges(model, pairs, None, edges=edges, samples=50, p=0.1, progress=False)


def test_theta_below_stops_edge_verification():
    """``atpstar.verify(..., stop=ThetaBelow(...))``: one draw of edge subsets, re-bounded as edges are verified;
    it stops with a statement about edges, and that statement covers every unverified edge's exact effect."""
    from atpstar import ThetaBelow

    model, pairs, graph, edges, c = linear_case()
    scores = edge_atp(model, pairs, qk_fix=False, graddrop=False, graph=graph)
    rule = ThetaBelow(relative=0.5, samples=300, p=0.1, edges=edges, seed=2)
    v = atpstar.verify(model, pairs, scores, budget=Budget(nodes=400), stop=rule, chunk=8)
    assert v.stopped.startswith("theta below target") and "unverified edge" in v.stopped, v.stopped
    assert rule.draws == 1 and rule.checks >= 2 and isinstance(rule.last, EdgeDiagnosis)
    n_pos = pairs.max_len
    left = ~torch.isin(edges.ids(graph, n_pos), v.edges.ids(graph, n_pos))
    assert float(exact(c, edges)[left].abs().max()) <= rule.last.theta < 0.5 * float(v.effect.abs().max())
    assert [k for k, _, _ in rule.history] == sorted(k for k, _, _ in rule.history)
