"""Substrate: unhooked equivalence, capture/patch exactness, batched activation patching vs a loop."""

import pytest
import torch
from conftest import ARCH_NAMES, VOCAB, StubTokenizer, random_pairs, tiny_hf, tiny_model
from torch import nn

import atpstar
from atpstar.substrate.capture import Intervention, Patch, node_index, run
from atpstar.types import ALL_KINDS, Node, NodeKind


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_unpatched_logits_equal_eager_model(arch):
    hf = tiny_hf(arch)
    ids = torch.randint(0, VOCAB, (3, 13), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = hf(input_ids=ids).logits  # the model's own eager attention
        model = tiny_model(arch)
        plain = model.hf(input_ids=ids).logits
        with Intervention(model, capture=frozenset(k.value for k in ALL_KINDS) | {"probs", "resid"}) as hooks:
            hooked = model.hf(input_ids=ids).logits
    assert reference.abs().mean() > 0.1  # a real signal, not all zeros
    assert (plain - reference).abs().max() <= 1e-5
    assert (hooked - reference).abs().max() <= 1e-5
    n = model.n_layers
    assert hooks.cache[(0, "q")].shape == (3, model.n_heads, 13, model.d_head)
    assert hooks.cache[(n - 1, "k")].shape == (3, model.n_kv_heads, 13, model.d_head)
    assert hooks.cache[(1, "neuron")].shape == (3, 13, model.d_mlp)
    assert hooks.cache[(n, "resid")].shape == (3, 13, model.d_model)
    assert not model.layers[0]._forward_pre_hooks and not model.layers[-1]._forward_hooks  # hooks removed


def test_hooks_removed_when_body_raises(model):
    with pytest.raises(ZeroDivisionError):
        with Intervention(model, capture=frozenset({"neuron", "resid"})):
            1 / 0
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in model.layers)
    from atpstar.substrate import attention

    assert attention.active() is None


def test_patch_that_matches_no_site_raises(model):
    patch = Patch(torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.zeros(1, model.d_head))
    with pytest.raises(RuntimeError, match="never applied"):
        with Intervention(model, patches={(1, NodeKind.Q): patch}):
            pass  # no forward pass reaches the site
    with pytest.raises(IndexError, match="layer"):
        Intervention(model, patches={(model.n_layers, NodeKind.Q): patch})


def test_patch_changes_only_the_target(model):
    """Overwriting one head output at one position changes that node and nothing before it."""
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        clean = Intervention(model, capture=frozenset({"head"}))
        run(model, ids, clean, last_only=False)
        value = torch.full((1, model.d_head), 3.0)
        patched = Intervention(model, capture=frozenset({"head"}),
                               patches={(0, "head"): Patch(torch.tensor([0]), torch.tensor([1]), torch.tensor([4]), value)})
        run(model, ids, patched, last_only=False)
    before, after = clean.cache[(0, "head")], patched.cache[(0, "head")]
    assert torch.equal(after[0, 1, 4], value[0])
    changed = (before != after).any(-1)
    assert changed.sum() == 1
    assert not torch.equal(clean.cache[(2, "head")][:, :, 4:], patched.cache[(2, "head")][:, :, 4:])
    assert torch.equal(clean.cache[(2, "head")][:, :, :4], patched.cache[(2, "head")][:, :, :4])


def reference_effect(model, pairs, metric, pair_i: int, node: Node) -> float:
    """One node per forward, batch 1, no layer skipping: the plain loop the batched AcP must match."""
    clean_ids, noise_ids = pairs.clean[pair_i][None], pairs.noise[pair_i][None]
    sub = pairs.select([pair_i])
    with torch.no_grad():
        noise = Intervention(model, capture=frozenset({node.kind.value}))
        run(model, noise_ids, noise)
        one = torch.tensor([0])
        unit, pos = torch.tensor([node.unit]), torch.tensor([node.pos])
        value = noise.cache[(node.layer, node.kind.value)][node_index(node.kind, one, unit, pos)]
        patched = Intervention(model, patches={(node.layer, node.kind): Patch(one, unit, pos, value)})
        return float(metric(run(model, clean_ids, patched), sub) - metric(run(model, clean_ids), sub))


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_batched_acp_equals_one_patch_per_forward(arch):
    model = tiny_model(arch)
    pairs = random_pairs(lengths=(6, 8))  # two lengths: exercises the right-alignment of positions
    full = atpstar.acp(model, pairs, kinds="all", per_pair=True, progress=False, batch_size=37)
    metric = atpstar.metrics.resolve(None, pairs)
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for kind in ALL_KINDS:
        for _ in range(6):
            layer = int(torch.randint(model.n_layers, (1,), generator=gen))
            unit = int(torch.randint(model.units(kind), (1,), generator=gen))
            pos = int(torch.randint(6, (1,), generator=gen))  # own position in pair 0 (length 6)
            for pair_i, offset in ((0, 2), (1, 0)):
                expected = reference_effect(model, pairs, metric, pair_i, Node(kind, layer, unit, pos))
                got = float(full.per_pair[kind][pair_i, layer, unit, pos + offset])
                assert abs(got - expected) <= 1e-5, (kind, layer, unit, pos, pair_i)
                checked += 1
    assert checked == 60
    assert full.to_frame()["score"].max() > 0.05  # effects are not all trivially zero
    # the shorter pair has no nodes at aligned positions 0, 1: NaN per pair, mean over the other pair only
    assert torch.isnan(full.per_pair[NodeKind.Q][0, :, :, :2]).all()
    assert torch.allclose(full.effect[NodeKind.Q][..., :2].float(), full.per_pair[NodeKind.Q][1, ..., :2])


def test_acp_subset_matches_full_run(model):
    pairs = random_pairs(lengths=(7, 7, 7), seed=4)
    full = atpstar.acp(model, pairs, kinds="attn", progress=False)
    frame = full.to_frame()
    subset = frame.sample(25, random_state=0)
    part = atpstar.acp(model, pairs, nodes=subset, progress=False)
    merged = part.to_frame().merge(frame, on="name", suffixes=("", "_full"))
    assert len(merged) == 25
    assert (merged["effect"] - merged["effect_full"]).abs().max() <= 1e-5  # float32, different batchings
    assert part.info["patches"] + part.info["skipped_identical"] == 25 * 3


def test_patching_own_clean_value_gives_exactly_zero(model):
    pairs = random_pairs(lengths=(8,))
    same = atpstar.PromptPairs(pairs.clean, pairs.clean, pairs.answer, pairs.distractor, pairs.metric)
    scores = atpstar.acp(model, same, kinds="all", progress=False)
    for kind in scores.kinds:
        assert torch.equal(scores.effect[kind], torch.zeros_like(scores.effect[kind])), kind


def test_neuron_patch_is_bit_exact_with_hand_written_hook():
    """acp on one neuron == a raw torch pre-hook writing the noise value into the down projection input.
    float64: the batched pass computes only positions >= the patch (different matmul shapes), so in
    float32 the two agree to rounding (~1e-6) rather than bit for bit."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(8,))
    layer, unit, pos = 1, 5, 6
    down = model.layers[layer].mlp.down_proj
    seen = {}
    h = down.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
    with torch.no_grad():
        model.hf(input_ids=pairs.noise[0][None])
    h.remove()

    def write(m, a):
        x = a[0].clone()
        x[0, pos, unit] = seen["x"][0, pos, unit]
        return (x,)

    h = down.register_forward_pre_hook(write)
    with torch.no_grad():
        patched = model.hf(input_ids=pairs.clean[0][None]).logits[0, -1]
    h.remove()
    with torch.no_grad():
        clean = model.hf(input_ids=pairs.clean[0][None]).logits[0, -1]
    a, d = int(pairs.answer[0]), int(pairs.distractor[0])
    expected = float((patched[a] - patched[d]) - (clean[a] - clean[d]))
    got = atpstar.acp(model, pairs, nodes=[Node(NodeKind.NEURON, layer, unit, pos)], progress=False)
    assert float(got.effect[NodeKind.NEURON][layer, unit, pos]) == pytest.approx(expected, abs=1e-12)
    assert abs(expected) > 1e-4


class ZeroMLP(nn.Module):
    def forward(self, x):
        return torch.zeros_like(x)


def _linear_after_cases(model, pairs, kind: NodeKind, units, t: int):
    """Nodes of the last layer at position t and their analytic effects Δnode · W_out · (u_a − u_d)."""
    last = model.n_layers - 1
    with torch.no_grad():
        caches = []
        for ids in (pairs.clean[0], pairs.noise[0]):
            hooks = Intervention(model, capture=frozenset({kind.value}))
            run(model, ids[None], hooks)
            caches.append(hooks.cache[(last, kind.value)])
        u = model.hf.lm_head.weight[pairs.answer[0]] - model.hf.lm_head.weight[pairs.distractor[0]]
        nodes, expected = [], []
        for unit in units:
            nodes.append(Node(kind, last, unit, t))
            if kind is NodeKind.NEURON:
                delta = caches[1][0, t, unit] - caches[0][0, t, unit]
                expected.append(float(delta * (model.layers[last].mlp.down_proj.weight[:, unit] @ u)))
            else:
                delta = caches[1][0, unit, t] - caches[0][0, unit, t]
                cols = slice(unit * model.d_head, (unit + 1) * model.d_head)
                expected.append(float(delta @ (model.layers[last].self_attn.o_proj.weight[:, cols].T @ u)))
    return nodes, expected


def linear_after_node(kind: NodeKind):
    """Last-layer nodes at the last position of a float64 Llama with the final norm removed (and,
    for heads, the last MLP): the model is linear after them. Returns model, pairs, nodes and their
    analytic effects Δnode · W_out · (u_answer − u_distractor)."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    model.hf.model.norm = nn.Identity()
    if kind is NodeKind.HEAD:
        model.layers[-1].mlp = ZeroMLP()
    pairs = random_pairs(lengths=(7,))
    return (model, pairs, *_linear_after_cases(model, pairs, kind, (0, 3, 5), t=6))


@pytest.mark.parametrize("kind", [NodeKind.NEURON, NodeKind.HEAD])
def test_effect_equals_analytic_value_when_linear_after_node(kind):
    model, pairs, nodes, expected = linear_after_node(kind)
    got = atpstar.acp(model, pairs, nodes=nodes, progress=False).to_frame().set_index("name")
    for node, value in zip(nodes, expected):
        assert float(got.loc[node.name, "effect"]) == pytest.approx(value, abs=1e-9)
    assert max(abs(v) for v in expected) > 1e-3


def test_gqa_key_node_is_shared_by_its_query_heads():
    model = tiny_model("llama")  # 6 query heads, 2 kv heads
    ids = torch.randint(0, VOCAB, (1, 6))
    value = torch.ones(1, model.d_head) * 5
    with torch.no_grad():
        base = Intervention(model, capture=frozenset({"probs"}))
        run(model, ids, base)
        patched = Intervention(model, capture=frozenset({"probs"}),
                               patches={(0, "k"): Patch(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]), value)})
        run(model, ids, patched)
    moved = (base.cache[(0, "probs")] - patched.cache[(0, "probs")]).abs().amax(dim=(0, 2, 3)) > 1e-6
    assert moved.tolist() == [False, False, False, True, True, True]


# --- clear errors --------------------------------------------------------------------------------
def test_prompt_pairs_of_different_token_length_are_refused():
    with pytest.raises(ValueError, match=r"pair 1: clean prompt has 3 tokens but noise prompt has 4"):
        atpstar.PromptPairs.from_ids([[1, 2], [1, 2, 3]], [[3, 4], [1, 2, 3, 4]], [5, 6], [7, 8])


def test_multi_token_answers_are_refused():
    with pytest.raises(ValueError, match="single token"):
        atpstar.PromptPairs.from_strings(StubTokenizer(), ["abc"], ["abd"], answer=["xy"])


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match="no prompt pairs"):
        atpstar.PromptPairs.from_ids([], [], [])


def test_out_of_range_nodes_are_refused(model):
    pairs = random_pairs(lengths=(5,))
    with pytest.raises(IndexError, match="layer 9 is out of range"):
        atpstar.acp(model, pairs, nodes=["L9.q.H0@1"], progress=False)
    with pytest.raises(IndexError, match="position 5 is out of range"):
        atpstar.acp(model, pairs, nodes=[Node(NodeKind.V, 0, 0, 5)], progress=False)
    with pytest.raises(ValueError, match="cannot parse node name"):
        atpstar.acp(model, pairs, nodes=["L1.attn.H0@1"], progress=False)


def test_nan_metric_is_refused(model):
    pairs = random_pairs(lengths=(5,))
    with pytest.raises(FloatingPointError, match="not finite"):
        atpstar.acp(model, pairs, nodes=["L0.q.H0@1"], metric=lambda logits, p: logits[:, 0] * float("nan"),
                    progress=False)


def test_unknown_model_and_architecture_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        atpstar.load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="tokenizer"):
        atpstar.load_model(tiny_hf("gpt2"))
    bad = nn.Linear(2, 2)
    bad.config = type("C", (), {"model_type": "bert"})()
    with pytest.raises(ValueError, match="unsupported architecture 'bert'.*supports"):
        atpstar.load_model(bad, tokenizer=StubTokenizer())


def test_node_names_round_trip():
    for node in (Node(NodeKind.Q, 3, 5, 12), Node(NodeKind.K, 0, 1, 4), Node(NodeKind.NEURON, 2, 77, 9)):
        assert Node.parse(node.name) == node
    assert Node(NodeKind.HEAD, 1, 2, 3).name == "L1.head.H2@3"
    assert NodeKind.parse("attn") == [NodeKind.Q, NodeKind.K, NodeKind.V, NodeKind.HEAD]
    with pytest.raises(ValueError, match="unknown node kind"):
        NodeKind.parse("mlp")


def test_interrupted_acp_resumes_from_checkpoint(model, tmp_path):
    pairs = random_pairs(lengths=(6, 8), seed=9)
    calls = {"n": 0, "stop_at": 5}

    def logit_diff(logits, p):
        calls["n"] += 1
        if calls["n"] == calls["stop_at"]:
            raise KeyboardInterrupt  # the user pressed Ctrl-C mid-run
        return atpstar.metrics.logit_diff(logits, p)

    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        atpstar.acp(model, pairs, kinds="attn", metric=logit_diff, batch_size=10, checkpoint=path,
                    checkpoint_every=0, progress=False)
    assert path.exists()
    calls["stop_at"] = -1
    resumed = atpstar.acp(model, pairs, kinds="attn", metric=logit_diff, batch_size=10, checkpoint=path, progress=False)
    fresh = atpstar.acp(model, pairs, kinds="attn", metric=logit_diff, batch_size=10, progress=False)
    assert resumed.info["resumed"] > 0
    assert resumed.info["patches"] < fresh.info["patches"]
    for kind in fresh.kinds:
        assert torch.allclose(resumed.effect[kind], fresh.effect[kind], atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="different run"):
        atpstar.acp(model, pairs, kinds="head", metric=logit_diff, checkpoint=path, progress=False)


@pytest.mark.slow
def test_smollm_loads_hooks_transparently_and_does_ioi(smollm):
    from atpstar.substrate.model import default_gguf_path, gguf_cache_path

    assert (smollm.n_layers, smollm.n_heads, smollm.n_kv_heads, smollm.d_mlp) == (30, 9, 3, 1536)
    pairs = atpstar.PromptPairs.from_strings(
        smollm, ["When Mary and John went to the store, John gave a drink to"],
        ["When Alice and Bob went to the store, Bob gave a drink to"], [" Mary"], [" John"])
    ids = pairs.clean[0][None]
    with torch.no_grad():
        hooked = run(smollm, ids, Intervention(smollm, capture=frozenset({"q", "neuron", "probs"})), last_only=False)
        smollm.hf.config._attn_implementation = "eager"
        try:
            eager = smollm.hf(input_ids=ids).logits
        finally:
            smollm.hf.config._attn_implementation = "atpstar"
    assert (hooked - eager).abs().max() <= 1e-5
    assert float(atpstar.metrics.logit_diff(hooked[:, -1], pairs)) > 2  # SmolLM2 does IOI
    local = atpstar.load_model(str(gguf_cache_path(default_gguf_path())))  # a local directory loads too
    gguf = atpstar.load_model(str(default_gguf_path()))  # and the .gguf file itself (cached conversion)
    with torch.no_grad():
        assert torch.allclose(run(local, ids), hooked[:, -1], atol=1e-4)
        assert torch.allclose(run(gguf, ids), hooked[:, -1], atol=1e-4)


def test_frame_names_are_node_names(model):
    frame = atpstar.atp(model, random_pairs(lengths=(6,)), kinds="all", progress=False).to_frame()
    for row in frame.sample(50, random_state=0).itertuples():
        assert Node.parse(row.name) == Node(NodeKind(row.kind), row.layer, row.unit, row.pos)
    assert len(frame) == sum(model.n_nodes(k, 6) for k in ALL_KINDS)
    assert frame["score"].is_monotonic_decreasing
