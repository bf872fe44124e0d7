"""The paper's baselines on tiny models where the answer is known.

``planted``: a float64 Llama with the final norm removed, so the model is linear after its
last-layer MLP neurons. The scope is every last-layer neuron at every position (64 units × 7
positions): a neuron at an earlier position cannot reach the last position's logits (effect 0),
and at the last position its effect on the logit difference is Δn · (W_down[:, n] · u) with
u = W_U[answer] − W_U[distractor]. Setting W_down's columns plants chosen mean effects exactly
(3, 2, 1.5 on three units) over a small background (the other columns scaled by 0.05); effects
of node sets are exactly additive.
"""

import math

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf, tiny_model
from torch import nn

import atpstar
from atpstar import Cost, NodeKind, NodeSet, PromptPairs
from atpstar.substrate.capture import Intervention, run
from atpstar.substrate.joint import JointPatcher
from atpstar.methods import METHODS, blocks, hierarchical, iterative, oracle, random_order, subsampling
from atpstar.methods.common import gather
from atpstar.nodes import KIND_INDEX

PLANTED = (3.0, 2.0, 1.5)
T = 7


def planted(n_pairs: int = 1, background: float = 0.05):
    """Model, pairs, the 448 last-layer neuron nodes (unit-major), their exact mean effects, and the
    indices of the planted nodes (largest first)."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    model.hf.model.norm = nn.Identity()
    base = random_pairs(lengths=(T,) * n_pairs, seed=5)
    a, d = int(base.answer[0]), int(base.distractor[0])
    pairs = PromptPairs.from_ids(base.clean, base.noise, [a] * n_pairs, [d] * n_pairs, metric="logit_diff")
    last = model.n_layers - 1
    with torch.no_grad():
        delta = torch.stack([_neurons(model, n)[last] - _neurons(model, c)[last] for c, n in zip(pairs.clean, pairs.noise)])
        mean_delta = delta.mean(0)
        u = model.hf.lm_head.weight[a] - model.hf.lm_head.weight[d]
        weight = model.layers[last].mlp.down_proj.weight
        weight *= background
        units = torch.argsort(mean_delta.abs(), descending=True)[: len(PLANTED)]
        for unit, value in zip(units.tolist(), PLANTED):
            weight[:, unit] = value / mean_delta[unit] * u / (u @ u)
        effect = (delta * (weight.T @ u)).mean(0)  # (units,) mean effect at the last position
    unit, pos = (g.flatten() for g in torch.meshgrid(torch.arange(model.d_mlp), torch.arange(T), indexing="ij"))
    nodes = NodeSet(torch.full_like(unit, KIND_INDEX[NodeKind.NEURON]), torch.full_like(unit, last), unit, pos)
    truth = torch.where(pos == T - 1, effect[unit], 0.0)
    return model, pairs, nodes, truth, units * T + T - 1


def _neurons(model, ids):
    hooks = Intervention(model, capture=frozenset({"neuron"}))
    run(model, ids[None], hooks)
    return {layer: hooks.cache[(layer, "neuron")][0, T - 1] for layer in range(model.n_layers)}


def _top(scores, nodes, k):
    """Indices into ``nodes`` of the k best-ranked nodes (to_frame's stable order)."""
    frame = scores.to_frame().head(k)
    key = {(int(u), int(p)): i for i, (u, p) in enumerate(zip(nodes.unit.tolist(), nodes.pos.tolist()))}
    return sorted(key[(u, p)] for u, p in zip(frame["unit"], frame["pos"]))


def test_planted_effects_are_exact_and_additive():
    model, pairs, nodes, truth, plant = planted()
    exact = gather(atpstar.acp(model, pairs, nodes=nodes, progress=False).effect, nodes)
    assert torch.allclose(exact, truth, atol=1e-10)
    assert truth[plant].tolist() == pytest.approx(PLANTED, abs=1e-10)
    assert 0 < truth.abs().sort().values[-4] < 0.5  # background: nonzero, well below the planted
    joint = JointPatcher(model, pairs, "neuron").effects(nodes, [plant, torch.arange(len(nodes))])[:, 0]
    assert joint.tolist() == pytest.approx([sum(PLANTED), float(truth.sum())], abs=1e-10)


# --- subsampling ---------------------------------------------------------------------------------
def test_subsampling_estimate_converges_to_the_additive_effect():
    """With additive effects the estimate is unbiased with standard error ≈ sqrt(Σ_m I(m)² / samples)
    (p(1−p)Σ I² · (1/(pK) + 1/((1−p)K)) = ΣI²/K). 4000 subsets: SE ≈ 0.063; every node
    within 5 SE (seeded: deterministic; a fresh seed fails with probability < 448 · 6e-7)."""
    model, pairs, nodes, truth, plant = planted()
    samples = 4000
    got = subsampling(model, pairs, nodes=nodes, p=0.3, samples=samples, progress=False)
    estimate = gather(got.effect, nodes)
    se = math.sqrt(float((truth**2).sum()) / samples)
    assert se < 0.07
    assert (estimate - truth).abs().max() < 5 * se
    rms = float((estimate - truth).pow(2).mean().sqrt())
    assert 0.8 * se < rms < 1.2 * se  # the error has the predicted size (measured: 0.0616 vs 0.0627)
    assert _top(got, nodes, 3) == sorted(plant.tolist())  # the planted nodes rank first
    assert torch.equal(gather(got.score, nodes), estimate.abs())
    assert got.info["patched_rows"] == samples * len(pairs)
    cost = Cost.of(got)
    assert cost.pairs == 1 and 2 < cost.forward <= 2 + samples  # 2 captures + one (partial) pass per subset


def test_subsampling_is_seeded_and_independent_of_chunking():
    model, pairs, nodes, _, _ = planted()
    a = subsampling(model, pairs, nodes=nodes, p=0.2, samples=60, progress=False, seed=3)
    b = subsampling(model, pairs, nodes=nodes, p=0.2, samples=60, progress=False, seed=3, memory_mb=0.05)  # 4 per chunk
    c = subsampling(model, pairs, nodes=nodes, p=0.2, samples=60, progress=False, seed=4)
    ea, eb, ec = (gather(s.effect, nodes) for s in (a, b, c))
    assert torch.allclose(ea, eb, atol=1e-12, equal_nan=True)
    assert not torch.allclose(ea, ec, atol=1e-3, equal_nan=True)


# --- blocks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["unit", "position"])
def test_block_effect_is_the_sum_of_its_members(order):
    model, pairs, nodes, truth, plant = planted()
    size = 5
    got = blocks(model, pairs, nodes=nodes, size=size, order=order, progress=False)
    # this scope is one (kind, layer): block = index // size in unit-major (u·T + p) or position-major (p·64 + u) order
    index = nodes.unit * T + nodes.pos if order == "unit" else nodes.pos * model.d_mlp + nodes.unit
    block = index // size
    block_sum = torch.zeros(int(block.max()) + 1, dtype=torch.float64).index_add_(0, block, truth)
    assert torch.allclose(gather(got.effect, nodes), block_sum[block], atol=1e-10)
    assert torch.equal(gather(got.score, nodes), gather(got.effect, nodes).abs())
    n_blocks = math.ceil(len(nodes) / size)
    assert got.info["blocks"] == n_blocks and got.info["patched_rows"] == n_blocks * len(pairs)
    if order == "unit":  # planted units are ≥ 7 nodes apart: three distinct blocks, ranked first
        top = _top(got, nodes, 3 * size)
        assert set(plant.tolist()) <= set(top)


def test_blocks_never_cross_a_layer_and_cost_what_they_patch(model):
    pairs = random_pairs(lengths=(6, 8))
    got = blocks(model, pairs, kinds=["k", "neuron"], size=7, progress=False)
    per_site = [model.n_kv_heads * pairs.max_len] * model.n_layers + [model.d_mlp * pairs.max_len] * model.n_layers
    n_blocks = sum(math.ceil(n / 7) for n in per_site)
    assert got.info["blocks"] == n_blocks
    assert got.info["patched_rows"] == n_blocks * len(pairs)
    # same blocks patched by hand: the same effects and the same forward-pass equivalents
    nodes = NodeSet.every(model, ["k", "neuron"], pairs.max_len)  # already (kind, layer, unit, pos) order
    site = nodes.kind * model.n_layers + nodes.layer
    sets = [idx for s in site.unique() for idx in (site == s).nonzero().flatten().split(7)]
    patcher = JointPatcher(model, pairs, ["k", "neuron"])
    mean = patcher.effects(nodes, sets).mean(1)
    want = torch.cat([mean[i].expand(len(s)) for i, s in enumerate(sets)])
    assert torch.allclose(gather(got.effect, nodes), want, atol=1e-6)
    assert Cost.of(got).forward == pytest.approx(patcher.stats["forward_equivalents"])
    assert want.abs().max() > 1e-2


# --- hierarchical --------------------------------------------------------------------------------
def test_hierarchical_threshold_zero_reaches_every_nonzero_leaf_exactly():
    """A non-linear float64 model, every node kind, pairs of two lengths: every node whose exact
    effect is nonzero becomes a leaf, with acp's effect."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(6, 8))
    truth = atpstar.acp(model, pairs, kinds="all", progress=False)
    got = hierarchical(model, pairs, kinds="all", branching=3, threshold=0.0, relative=False, progress=False)
    nodes = NodeSet.every(model, "all", pairs.max_len)
    exact, score = gather(truth.effect, nodes), gather(got.score, nodes)
    n_leaves = got.info["leaves"]
    leaf = score >= score.sort(descending=True).values[n_leaves - 1]
    assert int(leaf.sum()) == n_leaves
    assert bool(leaf[exact != 0].all())  # every nonzero node reached
    assert torch.allclose(gather(got.effect, nodes)[leaf], exact[leaf], atol=1e-10, rtol=0)
    assert (exact != 0).sum() > len(nodes) // 2
    rows = sum(got.info["groups"]) * len(pairs)
    assert got.info["patched_rows"] == rows and Cost.of(got).forward <= 2 * len(pairs) + rows


def test_hierarchical_leaves_match_acp_on_every_architecture(model):
    pairs = random_pairs(lengths=(7,))
    truth = atpstar.acp(model, pairs, kinds="attn", progress=False)
    got = hierarchical(model, pairs, kinds="attn", branching=2, threshold=0.0, relative=False, progress=False)
    nodes = NodeSet.every(model, "attn", pairs.max_len)
    exact, effect, score = (gather(s, nodes) for s in (truth.effect, got.effect, got.score))
    leaf = score >= score.sort(descending=True).values[got.info["leaves"] - 1]
    assert bool(leaf[exact.abs() > 1e-6].all())
    assert torch.allclose(effect[leaf], exact[leaf], atol=1e-5)


def test_hierarchical_descends_only_into_large_groups():
    model, pairs, nodes, truth, plant = planted()
    got = hierarchical(model, pairs, nodes=nodes, branching=4, threshold=1.0, relative=False, progress=False)
    groups = got.info["groups"]
    # one group (64 units) → 4 × 16 units → 4 × 4 → 4 × 1 unit → 4 position groups → single nodes
    assert groups[0] == 1 and sum(groups) < 60 < len(nodes)
    assert _top(got, nodes, 3) == sorted(plant.tolist())
    assert gather(got.effect, nodes)[plant].tolist() == pytest.approx(PLANTED, abs=1e-10)
    relative = hierarchical(model, pairs, nodes=nodes, branching=4, threshold=0.3, progress=False)
    assert _top(relative, nodes, 3) == sorted(plant.tolist())


# --- iterative -----------------------------------------------------------------------------------
def test_iterative_finds_planted_nodes_and_counts_its_patches():
    model, pairs, nodes, truth, plant = planted(n_pairs=4)
    got = iterative(model, pairs, nodes=nodes, per_round=3, rounds=2, progress=False)
    assert _top(got, nodes, 3) == sorted(plant.tolist())
    assert gather(got.effect, nodes)[plant].tolist() == pytest.approx(PLANTED, abs=1e-10)  # verified: exact
    n = len(nodes)
    # round 0: n nodes on 1 pair, 3 verified on the 3 other pairs; round 1: n − 3 on 1 pair, 3 on 2 pairs
    assert got.info["node_pairs"] == n + 3 * 3 + (n - 3) + 3 * 2
    assert got.info["verified"] == 6
    assert Cost.of(got).forward <= got.info["node_pairs"] + 2 * (1 + 3 + 1 + 2)


def test_iterative_over_every_pair_is_activation_patching():
    model = atpstar.load_model(tiny_hf("gpt2"), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(6, 8, 8))  # right-aligned positions, nodes absent from the short pair
    truth = atpstar.acp(model, pairs, kinds="all", progress=False)
    got = iterative(model, pairs, kinds="all", per_round=4, progress=False, seed=1)
    nodes = NodeSet.every(model, "all", pairs.max_len)
    exact, effect, score = (gather(s, nodes) for s in (truth.effect, got.effect, got.score))
    assert torch.allclose(effect, exact, atol=1e-10, rtol=0)
    assert torch.equal(torch.argsort(score, descending=True, stable=True)[:50],
                       torch.argsort(exact.abs(), descending=True, stable=True)[:50])
    assert got.info["node_pairs"] == sum(int((nodes.pos >= pairs.max_len - n).sum()) for n in pairs.lengths)


# --- reference rankings --------------------------------------------------------------------------
def test_oracle_ranks_by_exact_effect_at_no_cost():
    model, pairs, nodes, truth, plant = planted()
    exact = atpstar.acp(model, pairs, nodes=nodes, progress=False)
    got = oracle(model, pairs, truth=exact)
    assert _top(got, nodes, 3) == sorted(plant.tolist())
    assert torch.equal(gather(got.score, nodes), gather(exact.effect, nodes).abs())
    assert Cost.of(got).forward == 0 and got.info["truth_cost"] is None
    live = oracle(model, pairs, nodes=nodes, progress=False)
    assert torch.equal(gather(live.score, nodes), gather(got.score, nodes))
    assert Cost.of(live).forward == 0 and live.info["truth_cost"].forward > 0


def test_random_order_is_uniform_seeded_and_free(model):
    pairs = random_pairs(lengths=(7,))
    a, b, c = (random_order(model, pairs, kinds="all", seed=s) for s in (0, 0, 1))
    nodes = NodeSet.every(model, "all", pairs.max_len)
    sa, sb, sc = (gather(s.score, nodes) for s in (a, b, c))
    assert torch.equal(sa, sb) and not torch.equal(sa, sc)
    assert bool(((sa >= 0) & (sa < 1)).all()) and 0.4 < float(sa.mean()) < 0.6
    assert Cost.of(a).forward == 0


def test_methods_are_registered():
    assert {"subsampling", "blocks", "hierarchical", "iterative", "random", "oracle"} <= set(METHODS)
    assert METHODS["random"] is random_order and METHODS["oracle"] is oracle


# --- bad input -----------------------------------------------------------------------------------
def test_bad_options_are_refused():
    model = tiny_model("llama")
    pairs = random_pairs(lengths=(6, 6))
    one = pairs.select([0])
    cases = [
        (subsampling, {"p": 0.0}, "p must be a probability"), (subsampling, {"p": 1.0}, "p must be"),
        (subsampling, {"p": -0.2}, "p must be"), (subsampling, {"p": True}, "p must be"),
        (subsampling, {"samples": 1}, "samples must be an integer >= 2"), (subsampling, {"samples": 2.5}, "samples"),
        (blocks, {"size": 0}, "size must be an integer >= 1"), (blocks, {"order": "layer"}, "order must be one of"),
        (hierarchical, {"branching": 1}, "branching must be an integer >= 2"),
        (hierarchical, {"threshold": -0.1}, "threshold must be a finite number >= 0"),
        (hierarchical, {"threshold": float("nan")}, "threshold must be"),
        (hierarchical, {"threshold": 1.0, "relative": True}, "must be below 1"),
        (iterative, {"per_round": 0}, "per_round must be an integer >= 1"),
        (iterative, {"rounds": 3}, "at most the number of pairs"),
    ]
    for method, options, message in cases:
        with pytest.raises(ValueError, match=message):
            method(model, pairs, progress=False, **options)
    with pytest.raises(ValueError, match="at least 2"):
        iterative(model, one, progress=False)
    with pytest.raises(IndexError, match="out of range"):
        blocks(model, pairs, nodes=["L9.q.H0@1"], progress=False)
    truth = atpstar.acp(model, one, kinds="q", progress=False)
    with pytest.raises(ValueError, match="computed on 1 pairs but 2"):
        oracle(model, pairs, truth=truth)
    with pytest.raises(ValueError, match="no exact effect"):
        oracle(model, one, kinds="v", truth=truth)
