"""Verification: exact patching in rank order == activation patching, budgets honoured
exactly, stop rules at the exact node, resumable after an interruption, prior results reused."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import random_pairs, tiny_model
from test_substrate import linear_after_node

import atpstar
from atpstar import Budget, NodeKind, SmallEffects, verify
from atpstar.substrate import node_patcher as verify_patcher


def _setup(arch="llama", lengths=(6, 8), kinds="all"):
    model = tiny_model(arch)
    pairs = random_pairs(lengths=lengths)
    return model, pairs, atpstar.atp(model, pairs, kinds=kinds, progress=False)


def test_verify_equals_acp_in_ranking_order(arch):
    model, pairs, estimate = _setup(arch)
    top = estimate.to_frame().head(70)
    v = verify(model, pairs, estimate, budget=Budget(nodes=70), chunk=16, batch_size=23, progress=False)
    exact = atpstar.acp(model, pairs, nodes=top, per_pair=True, progress=False)
    assert [n.name for n in v.nodes.to_nodes()] == top["name"].tolist()  # the ranking's order
    assert v.rank.tolist() == list(range(70)) and v.verified_mask.sum() == 70 and v.verified_mask[:70].all()
    want_pp = torch.stack([exact.per_pair[NodeKind(r.kind)][:, r.layer, r.unit, r.pos] for r in top.itertuples()])
    torch.testing.assert_close(v.per_pair, want_pp.double(), atol=1e-5, rtol=1e-5, equal_nan=True)  # float32, other batching
    want = exact.to_frame().set_index("name").loc[top["name"], "effect"].to_numpy()
    assert (abs(v.effect.numpy() - want) <= 1e-5 + 1e-5 * abs(want)).all()
    assert abs(v.estimate.numpy() - top["effect"].to_numpy()).max() == 0  # the ranking's own estimate
    assert abs(v.score.numpy() - top["score"].to_numpy()).max() == 0
    assert v.effect.abs().max() > 0.05
    early = verify(model, pairs, ["L0.v.G0@1", "L2.neuron.N3@7"], progress=False)  # pair 0 lacks position 1
    assert early.per_pair[0, 0].isnan() and early.per_pair[0, 1].isfinite() and early.per_pair[1].isfinite().all()
    assert early.effect[0] == early.per_pair[0, 1]  # the mean over the pairs that have the node
    assert early.paper_cost.forward == 3


def test_effects_equal_analytic_values_when_linear_after_nodes():
    model, pairs, nodes, expected = linear_after_node(NodeKind.NEURON)
    v = verify(model, pairs, [n.name for n in nodes], progress=False)
    assert v.effect.tolist() == pytest.approx(expected, abs=1e-9)
    assert v.stopped == "exhausted" and len(v) == 3 and v.paper_cost.per_pair() == 3


def test_whole_ranking_costs_what_acp_costs():
    model, pairs, _ = _setup()
    truth = atpstar.acp(model, pairs, kinds="attn", per_pair=True, progress=False, batch_size=37)
    v = verify(model, pairs, truth, progress=False, batch_size=37, chunk=10**6)
    assert v.stopped == "exhausted" and len(v) == len(truth.to_frame())
    assert v.cost.forward == pytest.approx(truth.info["cost"].forward, rel=1e-12)  # same batches, same cost
    assert v.spent.forward == pytest.approx(v.cost.forward, rel=1e-12)  # nothing reused: all of it spent now
    assert v.paper_cost.forward == int(v.per_pair.isfinite().sum())  # one per verified node per pair
    frame = v.to_frame()
    assert list(frame.columns[:6]) == ["kind", "layer", "unit", "pos", "name", "rank"]
    assert (frame["score"] == frame["effect"].abs()).all() and frame["before_stop"].all()
    assert frame["cost"].sum() * len(pairs) == pytest.approx(v.cost.forward - 2 * len(pairs))


def test_forward_budget_is_never_exceeded_and_one_more_node_would():
    model, pairs, estimate = _setup()
    for budget in (2.5, 9.0, 30.0):
        v = verify(model, pairs, estimate, budget=budget, chunk=25, batch_size=16, progress=False)
        assert v.stopped == "budget" and 0 < len(v) < len(v.ranking)
        assert v.cost.per_pair() <= budget
        more = verify(model, pairs, estimate, budget=Budget(nodes=len(v) + 1), chunk=25, batch_size=16, progress=False)
        assert more.cost.per_pair() > budget
        torch.testing.assert_close(more.per_pair[:-1], v.per_pair, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_node_budget_and_seconds_budget():
    model, pairs, estimate = _setup()
    v = verify(model, pairs, estimate, budget=Budget(nodes=13), chunk=5, progress=False)
    assert (len(v), v.stopped, v.stop_index) == (13, "budget", 13)
    fast = verify(model, pairs, estimate, budget=Budget(seconds=1e-9), chunk=5, progress=False)
    assert (len(fast), fast.stopped) == (5, "budget")  # checked before each chunk: the first one runs


def _reference_stop(effect, window, threshold, relative, start=0):
    """Plain loop over prefixes n > start: the first at which the last `window` nodes are all small."""
    size = [0.0 if math.isnan(e) else abs(e) for e in effect]
    for n in range(max(start + 1, window), len(size) + 1):
        cut = max(threshold or 0.0, (relative or 0.0) * max(size[:n]))
        if all(s < cut for s in size[n - window:n]):
            return n
    return None


@pytest.mark.parametrize("rule", [SmallEffects(4, relative=0.2), SmallEffects(3, threshold=0.3),
                                  SmallEffects(6, threshold=0.05, relative=0.1)])
def test_small_effects_stops_at_the_exact_node(rule):
    """Ranked by the exact effects, with chunks that do not end where the rule fires."""
    model, pairs, _ = _setup()
    truth = atpstar.acp(model, pairs, kinds="attn", progress=False)
    v = verify(model, pairs, truth, stop=rule, chunk=7, progress=False)
    expected = _reference_stop(v.effect.tolist(), rule.window, rule.threshold, rule.relative)
    assert expected is not None and v.stop_index == expected
    assert v.stopped.startswith("small effects") and f"ranks {expected - rule.window}..{expected - 1}" in v.stopped
    assert expected <= len(v) < expected + 7  # the rest of the paid-for chunk is kept
    assert v.to_frame()["before_stop"].sum() == expected


def test_small_effects_check_matches_reference_on_random_effects():
    gen = torch.Generator().manual_seed(0)
    fired = 0
    for trial in range(300):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        effect = torch.randn(n, generator=gen, dtype=torch.float64) * torch.rand(n, generator=gen, dtype=torch.float64) ** 3
        effect[torch.rand(n, generator=gen) < 0.1] = float("nan")
        window = int(torch.randint(1, 6, (1,), generator=gen))
        threshold, relative = [(0.05, None), (None, 0.3), (0.02, 0.2)][trial % 3]
        rule = SmallEffects(window, threshold, relative)
        start = int(torch.randint(0, n + 1, (1,), generator=gen))  # nodes from `start` on are new
        for first in (0, start):
            found = rule.check(SimpleNamespace(effect=effect), first)
            want = _reference_stop(effect.tolist(), window, threshold, relative, first)
            assert (found[0] if found else None) == want
            fired += want is not None
    assert 100 < fired < 550  # both outcomes are exercised


def test_plain_callable_rule_stops_at_a_chunk_boundary():
    model, pairs, estimate = _setup()
    seen = []

    def enough(state):
        seen.append(len(state.nodes))
        return "enough" if len(state.nodes) >= 10 else None

    v = verify(model, pairs, estimate, stop=[enough], chunk=4, progress=False)
    assert (len(v), v.stop_index, v.stopped) == (12, 12, "enough") and seen == [4, 8, 12]


def _counting_metric(calls):
    def logit_diff(logits, p):
        calls["rows"] += logits.shape[0]
        calls["n"] += 1
        if calls["n"] == calls.get("stop_at"):
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run
        return atpstar.metrics.logit_diff(logits, p)

    return logit_diff


def test_interrupted_verification_resumes_without_repatching(tmp_path, monkeypatch):
    model, pairs, estimate = _setup(lengths=(6, 8, 8))
    calls = {"n": 0, "rows": 0, "stop_at": 9}
    metric = _counting_metric(calls)
    patched = []  # node ids in every patched batch
    real = verify_patcher.patched_metric

    def spy(model_, runs, nodes, own_pos, entry_node, *rest, **kw):
        patched.extend(nodes.take(entry_node).to_nodes())
        return real(model_, runs, nodes, own_pos, entry_node, *rest, **kw)

    monkeypatch.setattr(verify_patcher, "patched_metric", spy)
    path = tmp_path / "verify.ckpt"
    options = dict(budget=Budget(nodes=60), metric=metric, chunk=6, batch_size=8, checkpoint=path,
                   checkpoint_every=0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        verify(model, pairs, estimate, **options)
    saved = torch.load(path, weights_only=True)
    assert 0 < len(saved["ids"]) < 60
    done = set(estimate.to_frame()["name"][: len(saved["ids"])])  # finished chunks: a prefix of the ranking
    patched.clear()
    calls.update(n=0, rows=0, stop_at=None)
    resumed = verify(model, pairs, estimate, **options)
    again = {n.name for n in patched}
    assert not again & done  # no finished node patched twice
    assert (resumed.reused, resumed.patched) == (len(done), 60 - len(done))
    fresh = verify(model, pairs, estimate, **{**options, "checkpoint": None})
    torch.testing.assert_close(resumed.per_pair, fresh.per_pair, rtol=0, atol=0, equal_nan=True)
    assert resumed.cost.forward == pytest.approx(fresh.cost.forward, rel=1e-12)  # cost of these nodes
    assert resumed.spent.forward < fresh.spent.forward  # work actually done now
    calls.update(n=0, rows=0)
    cached = verify(model, pairs, estimate, **options)  # everything in the checkpoint: no forward at all
    assert calls["n"] == 0 and cached.patched == 0 and cached.spent.forward == 0
    torch.testing.assert_close(cached.per_pair, fresh.per_pair, rtol=0, atol=0, equal_nan=True)
    names = estimate.to_frame()["name"][:60].tolist()
    other = verify(model, pairs, names[::-3], metric=metric, checkpoint=path, progress=False)  # another ranking
    assert calls["n"] == 0 and other.reused == 20 and other.stopped == "exhausted"
    torch.testing.assert_close(other.per_pair, fresh.per_pair.flip(0)[::3], rtol=0, atol=0, equal_nan=True)


def test_prior_is_reused_and_verification_continues_where_it_stopped():
    model, pairs, estimate = _setup()
    calls = {"n": 0, "rows": 0}
    metric = _counting_metric(calls)
    first = verify(model, pairs, estimate, budget=Budget(nodes=30), metric=metric, progress=False)
    more = verify(model, pairs, estimate, budget=Budget(nodes=75), metric=metric, prior=first, progress=False)
    assert (more.reused, more.patched, len(more)) == (30, 45, 75)
    assert torch.equal(more.per_pair[:30].nan_to_num(7), first.per_pair.nan_to_num(7))
    once = verify(model, pairs, estimate, budget=Budget(nodes=75), metric=metric, progress=False)
    torch.testing.assert_close(more.per_pair, once.per_pair, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert more.spent.forward < once.spent.forward
    assert more.cost.forward == pytest.approx(first.cost.forward + float(more.node_cost[30:].sum()))
    calls["n"] = 0
    same = verify(model, pairs, estimate, budget=Budget(nodes=20), metric=metric, prior=more, progress=False)
    assert calls["n"] == 0 and same.patched == 0 and len(same) == 20


def test_bad_input_is_refused(tmp_path):
    model, pairs, estimate = _setup(lengths=(6,))
    with pytest.raises(IndexError, match="layer 7 is out of range"):
        verify(model, pairs, ["L0.q.H0@1", "L7.q.H0@1"], progress=False)
    with pytest.raises(ValueError, match="empty ranking"):
        verify(model, pairs, [], progress=False)
    subset = atpstar.acp(model, pairs, nodes=["L0.q.H0@1"], progress=False)
    subset.score[NodeKind.Q][:] = float("nan")
    with pytest.raises(ValueError, match="empty ranking"):
        verify(model, pairs, subset, progress=False)
    with pytest.raises(ValueError, match="more than once"):
        verify(model, pairs, ["L0.q.H0@1", "L1.k.G0@2", "L0.q.H0@1"], progress=False)
    for bad in (0, -3, 0.0):
        with pytest.raises(ValueError, match="positive number"):
            verify(model, pairs, estimate, budget=bad, progress=False)
    with pytest.raises(ValueError, match="at least one of"):
        Budget()
    with pytest.raises(ValueError, match="nodes must be a positive integer"):
        Budget(nodes=0)
    with pytest.raises(ValueError, match="clean and noise runs"):
        Budget(forward=1.5)
    with pytest.raises(TypeError, match="budget must be"):
        verify(model, pairs, estimate, budget="10", progress=False)
    with pytest.raises(ValueError, match="chunk"):
        verify(model, pairs, estimate, chunk=0, progress=False)
    with pytest.raises(TypeError, match="stop rule must be callable"):
        verify(model, pairs, estimate, stop="small", progress=False)
    for kwargs in ({"window": 0, "relative": 0.1}, {"window": 3}, {"window": 3, "relative": 1.5}, {"window": 3, "threshold": -1}):
        with pytest.raises(ValueError, match="SmallEffects"):
            SmallEffects(**kwargs)


def test_checkpoint_or_prior_of_another_run_is_refused(tmp_path):
    model, pairs, estimate = _setup(lengths=(6,))
    other = random_pairs(lengths=(6,), seed=7)
    path = tmp_path / "v.ckpt"
    first = verify(model, pairs, estimate, budget=Budget(nodes=5), checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="different run"):
        verify(model, other, estimate, budget=Budget(nodes=5), checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="different run"):
        verify(model, pairs, estimate, budget=Budget(nodes=5), metric="logprob", checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="different run"):
        verify(model, other, estimate, budget=Budget(nodes=5), prior=first, progress=False)
    with pytest.raises(TypeError, match="prior must be a Verification"):
        verify(model, pairs, estimate, prior=estimate, progress=False)
    acp_ckpt = tmp_path / "acp.ckpt"
    atpstar.acp(model, pairs, nodes=["L0.q.H0@1"], checkpoint=acp_ckpt, progress=False)
    with pytest.raises(ValueError, match="different run"):
        verify(model, pairs, estimate, budget=Budget(nodes=5), checkpoint=acp_ckpt, progress=False)


@pytest.mark.slow
def test_verify_top_atp_nodes_on_smollm(smollm):
    pairs = atpstar.tasks.ioi(smollm, n=2, seed=0)  # two lengths: some nodes exist for one pair only
    estimate = atpstar.atp(smollm, pairs, kinds="attn", graddrop=False, progress=False)  # AtP+QKfix: seconds
    v = verify(smollm, pairs, estimate, budget=Budget(nodes=24), progress=False)
    exact = atpstar.acp(smollm, pairs, nodes=estimate.to_frame().head(24), progress=False).to_frame().set_index("name")
    frame = v.to_frame()
    assert abs(frame["effect"].to_numpy() - exact.loc[frame["name"], "effect"].to_numpy()).max() <= 1e-4
    assert frame["score"].max() > 1.0  # IOI's top attention nodes have large effects
    assert v.cost.per_pair() < 2 + v.paper_cost.per_pair()  # fractional patches: cheaper than a forward per node
    assert v.cost.forward == pytest.approx(2 * len(pairs) + float(v.node_cost.sum()))
