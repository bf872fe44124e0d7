"""AtP / AtP*: exactness against activation patching where first order is exact, GradDrop against
detached models, and agreement on a real model."""

import pytest
import torch
from conftest import ARCH_NAMES, StubTokenizer, random_pairs, tiny_hf, tiny_model
from test_substrate import ZeroMLP, linear_after_node
from torch import nn

import atpstar
from atpstar.methods import qkfix
from atpstar.substrate.arch import get_module
from atpstar.substrate.capture import Intervention, run
from atpstar.methods.gradients import CleanRun
from atpstar.types import ALL_KINDS, PROBS, NodeKind


@pytest.mark.parametrize("kind", [NodeKind.NEURON, NodeKind.HEAD])
def test_atp_equals_patching_when_linear_after_node(kind):
    model, pairs, nodes, expected = linear_after_node(kind)
    est = atpstar.atp(model, pairs, kinds=[kind], qk_fix=False, graddrop=False, progress=False)
    exact = atpstar.acp(model, pairs, nodes=nodes, progress=False)
    for node, value in zip(nodes, expected):
        got = float(est.effect[kind][node.layer, node.unit, node.pos])
        assert got == pytest.approx(value, abs=1e-9)
        assert got == pytest.approx(float(exact.effect[kind][node.layer, node.unit, node.pos]), abs=1e-9)


def one_layer_attention_model(saturate: float) -> atpstar.Model:
    """One Llama layer with no MLP and no final norm: after the attention probabilities everything is
    linear (probs @ v -> o_proj -> residual -> unembedding) and logit_diff is linear in the logits."""
    torch.manual_seed(0)
    hf = tiny_hf("llama")
    hf.model.layers = hf.model.layers[:1]
    hf.config.num_hidden_layers = 1
    hf.model.norm = nn.Identity()
    attn = hf.model.layers[0].self_attn
    with torch.no_grad():
        attn.q_proj.weight.mul_(saturate)
        attn.k_proj.weight.mul_(saturate)
    model = atpstar.load_model(hf, tokenizer=StubTokenizer(), dtype=torch.float64)
    model.layers[0].mlp = ZeroMLP()
    return model


@pytest.mark.parametrize("saturate", [1.0, 12.0])
def test_qk_fix_is_exact_after_linear_attention(saturate):
    model = one_layer_attention_model(saturate)
    base = random_pairs(lengths=(8, 8), seed=3)
    noise = [x.clone() for x in base.noise]
    for c, x in zip(base.clean, noise):  # one layer: only the last query reaches the metric, so move it
        x[-1] = (c[-1] + 1) % 97
    pairs = atpstar.PromptPairs(base.clean, tuple(noise), base.answer, base.distractor)
    exact = atpstar.acp(model, pairs, kinds=["q", "k"], per_pair=True, progress=False)
    fixed = atpstar.atp(model, pairs, kinds=["q", "k"], qk_fix=True, graddrop=False, per_pair=True, progress=False)
    plain = atpstar.atp(model, pairs, kinds=["q", "k"], qk_fix=False, graddrop=False, per_pair=True, progress=False)
    for kind in (NodeKind.Q, NodeKind.K):
        truth = exact.per_pair[kind].double()
        assert truth.abs().max() > 0.1
        assert (fixed.per_pair[kind].double() - truth).abs().max() <= 1e-4
        plain_err = (plain.per_pair[kind].double() - truth).abs().max()
        if saturate > 1:  # saturated heads: the linearised softmax misses large effects
            assert plain_err > 0.1 * truth.abs().max(), kind
    if saturate > 1:
        probs = _probs(model, pairs)
        assert (probs.amax(-1) > 0.99).float().mean() > 0.5  # the heads really are saturated


def _probs(model, pairs):
    hooks = Intervention(model, capture=frozenset({PROBS}))
    with torch.no_grad():
        run(model, pairs.clean[0][None], hooks)
    return hooks.cache[(0, PROBS)]


def detached_write_grads(model, pairs, drop: int, sites) -> dict:
    """Reference: gradients of the metric in a model whose layer-`drop` attention and MLP outputs are
    detached (the residual skip path is untouched)."""
    block = model.layers[drop]
    detach = lambda m, a, out: (out[0].detach(), *out[1:]) if isinstance(out, tuple) else out.detach()  # noqa: E731
    handles = [get_module(block, name).register_forward_hook(detach) for name in (model.arch.attn, model.arch.mlp)]
    try:
        ids = torch.stack(list(pairs.clean))
        hooks = Intervention(model, capture=frozenset(s for _, s in sites), grad=True)
        with torch.enable_grad():
            value = atpstar.metrics.resolve(None, pairs)(run(model, ids, hooks), pairs)
        inputs = [hooks.cache[s] for s in sites]
        grads = torch.autograd.grad(value.sum(), inputs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {s: torch.zeros_like(t) if g is None else g for s, g, t in zip(sites, grads, inputs)}


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_graddrop_gradient_equals_detached_layer_write(arch):
    model = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(7, 7))
    kinds = {k.value for k in ALL_KINDS} | {PROBS}
    clean = CleanRun.forward(model, torch.stack(list(pairs.clean)), pairs, atpstar.metrics.resolve(None, pairs),
                             kinds, graddrop=True)
    _, resid_grads = clean.full(retain=True)
    seen = 0
    for drop, dropped in clean.dropped(resid_grads):
        reference = detached_write_grads(model, pairs, drop, clean.sites)
        for site, grad in dropped.items():
            assert torch.allclose(grad, reference[site], atol=1e-10), (drop, site)
            seen += 1
        for site in clean.sites:  # nodes in the dropped layer itself: every path runs through the write
            if site[0] == drop:
                assert reference[site].abs().max() == 0
    assert seen > 0


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_graddrop_score_matches_definition(arch):
    """score(n) = (1/(L-1)) Σ_ℓ |Δn · ∂L^(−ℓ)/∂n|, computed from detached-model gradients for every ℓ."""
    model = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(6, 6), seed=2)
    got = atpstar.atp(model, pairs, kinds="all", qk_fix=True, graddrop=True, progress=False)
    ids_noise = torch.stack(list(pairs.noise))
    noise = Intervention(model, capture=frozenset({"q", "k", "v", "head", "neuron"}))
    clean = Intervention(model, capture=frozenset({"q", "k", "v", "head", "neuron", PROBS}))
    with torch.no_grad():
        run(model, ids_noise, noise)
        run(model, torch.stack(list(pairs.clean)), clean)
    sites = [(l, s) for l in range(model.n_layers) for s in ("q", "k", "v", "head", "neuron", PROBS)]
    total = {k: torch.zeros(2, model.n_layers, model.units(k), 6, dtype=torch.float64) for k in ALL_KINDS}
    for drop in range(model.n_layers):
        grads = detached_write_grads(model, pairs, drop, sites)
        for layer in range(model.n_layers):
            mask, scale, softcap = clean.meta[layer]
            c, n = clean.cache, noise.cache
            g_probs = grads[(layer, PROBS)]
            args = dict(mask=mask, softcap=softcap, probs=c[(layer, PROBS)])
            total[NodeKind.Q][:, layer] += qkfix.query_fix(c[(layer, "q")], n[(layer, "q")], c[(layer, "k")], g_probs, scale, **args).abs()
            total[NodeKind.K][:, layer] += qkfix.key_fix(c[(layer, "q")], c[(layer, "k")], n[(layer, "k")], g_probs, scale, **args).abs()
            for kind in (NodeKind.V, NodeKind.HEAD):
                total[kind][:, layer] += ((n[(layer, kind.value)] - c[(layer, kind.value)]) * grads[(layer, kind.value)]).sum(-1).abs()
            d = (n[(layer, "neuron")] - c[(layer, "neuron")]) * grads[(layer, "neuron")]
            total[NodeKind.NEURON][:, layer] += d.transpose(1, 2).abs()
    for kind in ALL_KINDS:
        expected = total[kind].mean(0) / (model.n_layers - 1)
        assert torch.allclose(got.score[kind], expected, atol=1e-9), kind
        assert expected.max() > 0


def test_atp_batches_pairs_like_one_at_a_time(arch):
    model = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(6, 8, 6, 8), seed=7)
    together = atpstar.atp(model, pairs, kinds="all", batch_size=4, per_pair=True, progress=False)
    for i in range(len(pairs)):
        alone = atpstar.atp(model, pairs.select([i]), kinds="all", batch_size=1, per_pair=True, progress=False)
        for kind in ALL_KINDS:
            offset = pairs.max_len - pairs.lengths[i]
            a = together.per_pair[kind][i, ..., offset:]
            b = alone.per_pair[kind][0]
            assert torch.allclose(a.double(), b.double(), atol=1e-6), (i, kind)  # per-pair storage is float32
    frame = together.to_frame()
    assert {"kind", "layer", "unit", "pos", "name", "effect", "score"} <= set(frame.columns)


def test_identical_prompts_give_zero_estimates(model):
    pairs = random_pairs(lengths=(7,))
    same = atpstar.PromptPairs(pairs.clean, pairs.clean, pairs.answer, pairs.distractor)
    scores = atpstar.atp(model, same, kinds="all", progress=False)
    for kind in scores.kinds:
        assert scores.score[kind].abs().max() == 0, kind


@pytest.mark.slow
def test_atp_correlates_with_patching_on_smollm(smollm):
    """Spearman between AtP* and exact patching over 400 sampled attention nodes of one IOI pair."""
    from scipy.stats import spearmanr

    pairs = atpstar.PromptPairs.from_strings(
        smollm, ["When Mary and John went to the store, John gave a drink to"],
        ["When Alice and Bob went to the store, Bob gave a drink to"], [" Mary"], [" John"])
    est = atpstar.atp(smollm, pairs, kinds="attn", progress=False).to_frame()
    sample = est.sample(400, random_state=0)
    exact = atpstar.acp(smollm, pairs, nodes=sample, progress=False).to_frame()
    merged = sample.merge(exact, on="name", suffixes=("_atp", "_acp"))
    rho = spearmanr(merged["effect_atp"], merged["effect_acp"]).statistic
    assert rho > 0.9, rho  # measured 0.985
