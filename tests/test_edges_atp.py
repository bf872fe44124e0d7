"""Edge AtP / AtP*: sum over readers = node AtP of the write, exactness where first order is exact,
the QK fix against brute-force softmax recomputation, and planted traps (saturation, cancellation)."""

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf, tiny_model
from test_atp import one_layer_attention_model
from test_edges_patching import HAND, _mod, _write
from torch import nn

import atpstar
from atpstar.edges import EdgeGraph, EdgeSet
from atpstar.edges.atp import atp
from atpstar.edges.patching import EdgePatcher, edge_acp
from atpstar.substrate.capture import Intervention, run
from atpstar.types import PROBS


def _write_grad(model, arch, ids, writer: str, answer, distractor):
    """∂L/∂(write) at every position: a zero tensor added to the writer's output (the residual for embed)."""
    spec, leaf = HAND[arch], {}
    if writer == "embed":
        module, post = model.layers[0], False
    else:
        layer = int(writer.split(".")[0][1:])
        path = spec["mlp"] if writer.endswith("mlp") else spec["attn"] or spec["o"]
        module, post = _mod(model.layers[layer], path), True

    def add(x):
        leaf["e"] = torch.zeros_like(x, requires_grad=True)
        return x + leaf["e"]

    if post:
        hook = lambda m, a, out: (add(out[0]), *out[1:]) if isinstance(out, tuple) else add(out)  # noqa: E731
        handle = module.register_forward_hook(hook)
    else:
        hook = lambda m, a, kw: ((add(a[0]), *a[1:]), kw) if a else (a, {**kw, "hidden_states": add(kw["hidden_states"])})  # noqa: E731
        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.enable_grad():
            logits = model.hf(input_ids=ids[None]).logits[0, -1]
            (grad,) = torch.autograd.grad(logits[answer] - logits[distractor], leaf["e"])
    finally:
        handle.remove()
    return grad[0]  # (T, d)


def test_edge_atp_sums_to_node_atp_of_the_write(model, arch):
    pairs = random_pairs(lengths=(7,), seed=6)
    graph = EdgeGraph.of(model)
    est = atp(model, pairs, qk_fix=False, graddrop=False, graph=graph)
    clean, noise = pairs.clean[0], pairs.noise[0]
    writer = "L0.head.H1" if graph.per_head else "L0.attn"
    for w_name in ("embed", writer, "L1.mlp"):
        w = int(graph.writer_index([w_name])[0])
        grad = _write_grad(model, arch, clean, "L0.attn" if ".head." in w_name else w_name, pairs.answer[0],
                           pairs.distractor[0])
        for t in (3, 6):
            delta = _write(model, arch, noise, w_name, t) - _write(model, arch, clean, w_name, t)
            node = float(delta @ grad[t])
            edges = float(est.effect[w, graph.valid[w], t].sum())
            assert edges == pytest.approx(node, rel=1e-4, abs=1e-5), (w_name, t)
    assert est.effect[~graph.valid].isnan().all() and est.effect[graph.valid].isfinite().all()


def _linear_llama():
    """Tiny Llama, float64, linear after the last layer's q/k/v readers' input and after the logits reader:
    no final norm, no input norm in the last layer, the last MLP silenced."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    model.hf.model.norm = nn.Identity()
    model.layers[2].input_layernorm = nn.Identity()
    with torch.no_grad():
        model.layers[2].mlp.down_proj.weight.zero_()
    return model


def test_edge_atp_equals_exact_where_linear_after_reader():
    model = _linear_llama()
    pairs = random_pairs(lengths=(7,), seed=7)
    graph = EdgeGraph.of(model)
    est = atp(model, pairs, qk_fix=False, graddrop=False, graph=graph, per_pair=True)
    every = EdgeSet.every(graph, 7)
    linear = (graph.reader_kind[every.reader] == 4) | ((graph.reader_layer[every.reader] == 2)
                                                        & (graph.reader_kind[every.reader] == 2))  # logits, L2 v
    edges = every.take(linear)
    exact = edge_acp(model, pairs, edges, per_pair=True)
    index = (edges.writer, edges.reader, edges.pos)
    truth = exact.per_pair[0][index].double()
    assert truth.abs().max() > 0.1
    torch.testing.assert_close(est.per_pair[0][index].double(), truth, atol=1e-5, rtol=1e-5)


def test_edge_qk_fix_exact_on_saturated_heads_where_plain_atp_fails():
    """One saturated attention layer, linear after the softmax: the QK-fixed edge estimate is the exact
    edge effect (brute-force softmax with the reader's recomputed query/key); plain AtP misses it."""
    model = one_layer_attention_model(12.0)
    base = random_pairs(lengths=(8,), seed=3)
    noise = base.noise[0].clone()
    noise[-1] = (base.clean[0][-1] + 1) % 97
    noise[3] = (base.clean[0][3] + 5) % 97
    pairs = atpstar.PromptPairs(base.clean, (noise,), base.answer, base.distractor)
    graph = EdgeGraph.of(model)
    every = EdgeSet.every(graph, 8)
    qk = every.take(graph.reader_kind[every.reader] <= 1)
    truth = edge_acp(model, pairs, qk, per_pair=True).per_pair[0]
    fixed = atp(model, pairs, qk_fix=True, graddrop=False, graph=graph, per_pair=True).per_pair[0]
    plain = atp(model, pairs, qk_fix=False, graddrop=False, graph=graph, per_pair=True).per_pair[0]
    index = (qk.writer, qk.reader, qk.pos)
    t, f, p = truth[index].double(), fixed[index].double(), plain[index].double()
    assert t.abs().max() > 0.1
    torch.testing.assert_close(f, t, atol=1e-4, rtol=1e-4)  # the attention softmax runs in float32
    top = int(t.abs().argmax())
    assert abs(float(p[top])) < 0.1 * abs(float(t[top]))  # the planted saturated edge: plain AtP misses it
    assert int((p.abs() > p.abs()[top]).sum()) >= 1 and int((f.abs() > f.abs()[top]).sum()) == 0


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt_neox", "gpt2"])
def test_edge_qk_fix_equals_brute_force_softmax(arch):
    """Σ (a' − a) g with a' the attention under the exact edge patch (hand hooks) and g = ∂L/∂a (autograd)."""
    model = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(7,), seed=8)
    graph = EdgeGraph.of(model)
    est = atp(model, pairs, qk_fix=True, graddrop=False, graph=graph, per_pair=True).per_pair[0]
    layer, clean = 2, pairs.clean[0]
    hooks = Intervention(model, capture=frozenset({PROBS}), grad=True)
    with torch.enable_grad():
        logits = run(model, clean[None], hooks)
        probs = hooks.cache[(layer, PROBS)]
        (g,) = torch.autograd.grad(logits[0, pairs.answer[0]] - logits[0, pairs.distractor[0]], probs)
    attn = "L1.attn" if not graph.per_head else "L1.head.H1"
    for name in [f"embed@5 -> L2.q.H1@5", f"{attn}@6 -> L2.q.H0@6", "L0.mlp@3 -> L2.k.G0@3", f"{attn}@4 -> L2.k.G0@4"]:
        moved = _patched_probs(model, arch, pairs, name, layer)
        brute = float(((moved - _probs64(model, clean, layer, [])) * g).sum())
        e = EdgeSet.from_names(graph, [name])
        assert float(est[e.writer[0], e.reader[0], e.pos[0]]) == pytest.approx(brute, rel=1e-7, abs=1e-10), name


def _patched_probs(model, arch, pairs, edge, layer):
    """Attention probabilities of ``layer`` when only the edge's q/k reader sees x + Δw (hand hooks)."""
    clean, noise = pairs.clean[0], pairs.noise[0]
    (w_name, t), (r_name, _) = [(s.split("@")[0], int(s.split("@")[1])) for s in edge.split(" -> ")]
    delta = _write(model, arch, noise, w_name, t) - _write(model, arch, clean, w_name, t)
    kind, unit, D = r_name.split(".")[1], int(r_name[-1]), model.d_head
    path, c = HAND[arch]["proj"](kind, unit, D, model.n_heads)
    block = model.layers[layer]
    norm, proj, seen = _mod(block, HAND[arch]["norm"]), _mod(block, path), {}

    def keep(m, a):
        seen["x"] = a[0]

    def splice(m, a, out):
        out = out.clone()
        out[0, t, c:c + D] = proj.forward(norm.forward(seen["x"][0, t] + delta))[c:c + D]
        return out

    return _probs64(model, clean, layer, [(norm, keep, False), (proj, splice, True)])


def _probs64(model, ids, layer, hooks):
    """Attention probabilities of ``layer`` recomputed in float64 from its queries and keys (the model's
    own softmax runs in float32), under the given plain torch hooks."""
    handles = [m.register_forward_hook(h) if post else m.register_forward_pre_hook(h) for m, h, post in hooks]
    capture = Intervention(model, capture=frozenset({"q", "k", PROBS}))
    try:
        with torch.no_grad():
            run(model, ids[None], capture)
    finally:
        for h in handles:
            h.remove()
    q, k = capture.cache[(layer, "q")], capture.cache[(layer, "k")]
    mask, scale, softcap = capture.meta[layer]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) * scale
    assert softcap is None
    return torch.softmax(scores + mask[..., : k.shape[-2]], dim=-1)


class _Readout(nn.Module):
    """MLP 0 of the cancellation trap: writes (b · h) along a / |a|²."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b = a / a.dot(a), b

    def forward(self, h):
        return (h @ self.b)[..., None] * self.a


class _Cancel(nn.Module):
    """MLP 1 of the trap: writes −tanh(a · h − z0) along a / |a|²; at the clean point its slope −1 cancels
    the direct path of everything that moves a · h, to first order only."""

    def __init__(self, a):
        super().__init__()
        self.a, self.z0 = a, 0.0

    def forward(self, h):
        return -torch.tanh(h @ self.a - self.z0)[..., None] * self.a / self.a.dot(self.a)


def test_planted_cancelling_edge_found_by_graddrop_not_plain_atp():
    hf = tiny_hf("llama")
    hf.model.layers = hf.model.layers[:2]
    hf.config.num_hidden_layers = 2
    hf.model.norm = nn.Identity()
    model = atpstar.load_model(hf, tokenizer=StubTokenizer(), dtype=torch.float64)
    base = random_pairs(lengths=(7,), seed=9)
    noise = base.noise[0].clone()
    noise[-1] = (base.clean[0][-1] + 1) % 97
    pairs = atpstar.PromptPairs(base.clean, (noise,), base.answer, base.distractor)
    a = (model.hf.lm_head.weight[pairs.answer[0]] - model.hf.lm_head.weight[pairs.distractor[0]]).detach()
    delta_e = (model.hf.model.embed_tokens.weight[pairs.noise[0][-1]] - model.hf.model.embed_tokens.weight[pairs.clean[0][-1]]).detach()
    with torch.no_grad():
        for block in model.layers:
            block.self_attn.o_proj.weight.zero_()
            block.post_attention_layernorm = nn.Identity()
    model.layers[0].mlp = _Readout(a, 3.0 * delta_e / delta_e.dot(delta_e))  # embed -> MLP 0 moves a·h by 3
    model.layers[1].mlp = cancel = _Cancel(a)
    hooks = Intervention(model, capture=frozenset({"resid"}))
    with torch.no_grad():
        run(model, pairs.clean[0][None], hooks)
    cancel.z0 = float(hooks.cache[(1, "resid")][0, -1] @ a)
    graph = EdgeGraph.of(model)
    name = "embed@6 -> L0.mlp@6"
    e = EdgeSet.from_names(graph, [name])
    index = (e.writer[0], e.reader[0], e.pos[0])
    truth = float(edge_acp(model, pairs, [name]).effect[index])
    assert truth == pytest.approx(3 - torch.tanh(torch.tensor(3.0)).item(), rel=1e-6)
    plain = atp(model, pairs, qk_fix=False, graddrop=False, graph=graph)
    dropped = atp(model, pairs, qk_fix=True, graddrop=True, graph=graph)
    assert abs(float(plain.effect[index])) < 1e-9  # the linear estimate cancels
    assert float(dropped.score[index]) == pytest.approx(3.0, rel=1e-6)  # (|Î_0| + |Î_1|) / (L − 1) = (0 + 3) / 1
    rank = lambda s: int((s.score.nan_to_num(-1) > s.score[index]).sum())  # noqa: E731
    assert rank(dropped) < 5 and float(plain.score[index]) < 1e-9 * float(plain.score.nan_to_num().max())


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_edge_graddrop_score_matches_detached_writes(arch):
    """GradDrop edge score = (1/(L−1)) Σ_ℓ |Δw · ∂L^(−ℓ)/∂r_v|, the gradient taken at the MLP / logits readers'
    private inputs in a model whose block-ℓ attention and MLP writes are detached (skip path kept)."""
    from atpstar.edges.writes import write_deltas
    from atpstar.substrate.arch import get_module

    model = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(7,), seed=10)
    graph = EdgeGraph.of(model)
    est = atp(model, pairs, qk_fix=False, graddrop=True, graph=graph)
    deltas = write_deltas(model, graph, pairs.clean[0][None], pairs.noise[0][None])[0][0]  # (W, T, d)
    spec, L = HAND[arch], model.n_layers
    norms = [_mod(block, spec["mlp_norm"]) for block in model.layers] + [_mod(model.hf, spec["final"])]
    readers = [graph.reader_index([f"L{l}.mlp"])[0] for l in range(L)] + [graph.reader_index(["logits"])[0]]
    terms = torch.zeros(graph.n_writers, len(readers), 7, dtype=torch.float64)
    for drop in range(L):
        copies = {}

        def private(i):
            def hook(m, a):
                copies[i] = a[0].clone()
                return (copies[i], *a[1:])
            return hook

        detach = lambda m, a, out: (out[0].detach(), *out[1:]) if isinstance(out, tuple) else out.detach()  # noqa: E731
        block = model.layers[drop]
        handles = [get_module(block, n).register_forward_hook(detach) for n in (model.arch.attn, model.arch.mlp)]
        handles += [norm.register_forward_pre_hook(private(i)) for i, norm in enumerate(norms)]
        try:
            with torch.enable_grad():
                emb = model.hf.get_input_embeddings()(pairs.clean[0][None]).detach().requires_grad_(True)
                logits = model.hf(inputs_embeds=emb).logits[0, -1]
                value = logits[pairs.answer[0]] - logits[pairs.distractor[0]]
                grads = torch.autograd.grad(value, [copies[i] for i in range(len(norms))], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        for i, g in enumerate(grads):
            if g is not None:
                terms[:, i] += torch.einsum("wtd,td->wt", deltas.double(), g[0]).abs()
    want = terms / (L - 1)
    got = est.score[:, torch.stack(readers)]
    valid = graph.valid[:, torch.stack(readers)]
    assert want[valid].abs().max() > 1e-3
    torch.testing.assert_close(got[valid].double(), want[valid], atol=1e-9, rtol=1e-7)


def test_whole_attention_writer_is_the_sum_of_its_heads():
    model, pairs = tiny_model("llama"), random_pairs(lengths=(7,), seed=11)
    whole, heads = EdgeGraph.of(model, per_head=False), EdgeGraph.of(model)
    a = atp(model, pairs, qk_fix=False, graddrop=False, graph=whole)
    b = atp(model, pairs, qk_fix=False, graddrop=False, graph=heads)
    w, hs = whole.writer_index(["L1.attn"])[0], heads.writer_index([f"L1.head.H{h}" for h in range(6)])
    assert whole.reader_names == heads.reader_names
    torch.testing.assert_close(a.effect[w], b.effect[hs].sum(0), atol=2e-6, rtol=1e-5, equal_nan=True)


def test_edge_estimators_let_go_of_each_pairs_tensors():
    """Each pair's backward pass must not outlive it (a closure cycle through autograd hooks that gc cannot see once
    kept every pair's activations: 3 GB per pair of SmolLM2 under EAP-IG-activations)."""
    import gc

    from atpstar.edges.eap_ig import eap_ig_activations

    model = tiny_model("llama")
    gc.collect()
    before = sum(torch.is_tensor(o) for o in gc.get_objects())
    atp(model, random_pairs((7, 8), seed=1))
    eap_ig_activations(model, random_pairs((7, 8), seed=2), ig_steps=2)
    gc.collect()
    assert sum(torch.is_tensor(o) for o in gc.get_objects()) == before
    assert not [o for o in gc.get_objects() if type(o).__name__ == "_PairEstimate"]
