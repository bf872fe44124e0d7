"""Exact edge patching against independent hand-written path patches (plain torch hooks)."""

import pytest
import torch
from torch import nn

import atpstar
from atpstar.edges import EdgeGraph, EdgeSet
from atpstar.edges.patching import EdgePatcher, edge_acp
from conftest import random_pairs, tiny_model

# module names written out here, independently of atpstar.edges.sites
HAND = {
    "llama": dict(norm="input_layernorm", mlp_norm="post_attention_layernorm", final="model.norm",
                  o="self_attn.o_proj", mlp="mlp", attn=None, proj=lambda kind, u, D, H: (f"self_attn.{kind}_proj", u * D)),
    "gemma3": dict(norm="input_layernorm", mlp_norm="pre_feedforward_layernorm", final="model.norm",
                   o=None, mlp="post_feedforward_layernorm", attn="post_attention_layernorm",
                   proj=lambda kind, u, D, H: (f"self_attn.{kind}_proj", u * D)),
    "gpt2": dict(norm="ln_1", mlp_norm="ln_2", final="transformer.ln_f", o="attn.c_proj", mlp="mlp", attn=None,
                 proj=lambda kind, u, D, H: ("attn.c_attn", "qkv".index(kind) * H * D + u * D)),
    "gpt_neox": dict(norm="input_layernorm", mlp_norm="post_attention_layernorm", final="gpt_neox.final_layer_norm",
                     o="attention.dense", mlp="mlp", attn=None,
                     proj=lambda kind, u, D, H: ("attention.query_key_value", u * 3 * D + "qkv".index(kind) * D)),
}


def _mod(root, path):
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _keep(store, key, fn):
    """A hook that records ``fn(args, out)`` once and returns None (changes nothing)."""
    def hook(m, a, *rest):
        store.setdefault(key, fn(a, *rest))

    return hook


def _run(model, ids, hooks):
    handles = [module.register_forward_hook(h) if post else module.register_forward_pre_hook(h)
               for module, h, post in hooks]
    try:
        with torch.no_grad():
            return model.hf(input_ids=ids[None]).logits[0, -1]
    finally:
        for h in handles:
            h.remove()


def _write(model, arch, ids, writer: str, t: int):
    """The writer's write at position t, captured by hand."""
    spec, got = HAND[arch], {}
    layers = model.layers
    if writer == "embed":
        hook = _keep(got, "x", lambda a, kw: (a[0] if a else kw["hidden_states"])[0, t])
        handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                model.hf(input_ids=ids[None])
        finally:
            handle.remove()
        return got["x"]
    layer = int(writer.split(".")[0][1:])
    block = layers[layer]
    if writer.endswith(".mlp") or writer.endswith(".attn"):
        path = spec["mlp"] if writer.endswith(".mlp") else spec["attn"] or spec["o"]
        hook = _keep(got, "x", lambda a, out: (out[0] if isinstance(out, tuple) else out)[0, t])
        _run(model, ids, [(_mod(block, path), hook, True)])
        return got["x"]
    h, D = int(writer.split(".H")[1]), model.d_head
    o = _mod(block, spec["o"])
    _run(model, ids, [(o, _keep(got, "z", lambda a: a[0][0, t, h * D:(h + 1) * D]), False)])
    w = o.weight if isinstance(o, nn.Linear) else o.weight.t()
    return w[:, h * D:(h + 1) * D] @ got["z"]


def hand_edge(model, arch, pair, edge: str) -> float:
    """Metric change when only the edge's reader sees x + w_u(noise) − w_u(clean) at t."""
    clean, noise = pair.clean[0], pair.noise[0]
    (w_name, t), (r_name, _) = [(s.split("@")[0], int(s.split("@")[1])) for s in edge.split(" -> ")]
    delta = _write(model, arch, noise, w_name, t) - _write(model, arch, clean, w_name, t)
    spec = HAND[arch]

    def add_at_t(m, args):
        x = args[0].clone()
        x[0, t] += delta
        return (x, *args[1:])

    if r_name == "logits":
        hooks = [(_mod(model.hf, spec["final"]), add_at_t, False)]
    else:
        layer, kind = int(r_name.split(".")[0][1:]), r_name.split(".")[1]
        block = model.layers[layer]
        if kind == "mlp":
            hooks = [(_mod(block, spec["mlp_norm"]), add_at_t, False)]
        else:
            unit, D = int(r_name[-1]), model.d_head
            path, c = spec["proj"](kind, unit, D, model.n_heads)
            norm, proj, seen = _mod(block, spec["norm"]), _mod(block, path), {}

            def splice(m, a, out):
                out = out.clone()
                out[0, t, c:c + D] = proj.forward(norm.forward(seen["x"][0, t] + delta))[c:c + D]
                return out

            hooks = [(norm, _keep(seen, "x", lambda a: a[0]), False), (proj, splice, True)]
    logits = _run(model, clean, hooks)
    clean_logits = _run(model, clean, [])
    metric = lambda lg: lg[pair.answer[0]] - lg[pair.distractor[0]]  # noqa: E731
    return float(metric(logits) - metric(clean_logits))


def _some_edges(graph, n_pos, n=10, seed=0):
    every = EdgeSet.every(graph, n_pos)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(every), generator=gen)[:n]
    # one edge per reader kind at least, and one from embed
    kinds = graph.reader_kind[every.reader]
    extra = torch.stack([(kinds == k).nonzero()[int(torch.randint(int((kinds == k).sum()), (1,), generator=gen))][0]
                         for k in range(5)])
    return every.take(torch.cat([pick, extra, torch.tensor([5])]))


def test_edge_patch_equals_hand_path_patch(model, arch):
    pairs = random_pairs(lengths=(7,), seed=3)
    graph = EdgeGraph.of(model)
    edges = _some_edges(graph, 7)
    scores = edge_acp(model, pairs, edges, batch_size=5, per_pair=True)
    got = scores.per_pair[0][edges.writer, edges.reader, edges.pos]
    want = torch.tensor([hand_edge(model, arch, pairs, name) for name in edges.names(graph)])
    assert want.abs().max() > 1e-3  # the patches do something
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_sum_to_node_head_and_mlp(model, arch):
    """All edges out of a writer at t, patched jointly, equal patching the writer's write at t."""
    pairs = random_pairs(lengths=(7,), seed=4)
    graph = EdgeGraph.of(model)
    patcher = EdgePatcher(model, pairs, graph=graph)
    t = 4
    writer = "L0.head.H1" if graph.per_head else "L0.attn"
    for w_name in (writer, "L1.mlp", "embed"):
        w = graph.writer_index([w_name])[0]
        readers = graph.valid[w].nonzero().flatten()
        edges = EdgeSet(torch.full_like(readers, int(w)), readers, torch.full_like(readers, t))
        joint = patcher.effects(edges, torch.ones(1, len(edges), dtype=torch.bool))[0, 0]
        if w_name == "L0.head.H1":
            node = atpstar.acp(model, pairs, nodes=[f"L0.head.H1@{t}"], progress=False).effect[atpstar.NodeKind.HEAD][0, 1, t]
        else:
            node = _node_by_hand(model, arch, pairs, w_name, t)
        assert abs(float(joint) - float(node)) < 2e-5, (w_name, float(joint), float(node))
        assert abs(float(node)) > 1e-4


def _node_by_hand(model, arch, pairs, w_name, t):
    clean, noise = pairs.clean[0], pairs.noise[0]
    delta = _write(model, arch, noise, w_name, t) - _write(model, arch, clean, w_name, t)
    spec = HAND[arch]
    if w_name == "embed":
        block = model.layers[0]

        def hook(m, a, kw):
            if a:
                x = a[0].clone()
                x[0, t] += delta
                return (x, *a[1:]), kw
            x = kw["hidden_states"].clone()
            x[0, t] += delta
            return a, {**kw, "hidden_states": x}

        handle = block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.no_grad():
                logits = model.hf(input_ids=clean[None]).logits[0, -1]
        finally:
            handle.remove()
    else:
        layer, is_mlp = int(w_name.split(".")[0][1:]), w_name.endswith("mlp")
        path = spec["mlp"] if is_mlp else spec["attn"] or spec["o"]

        def add(m, a, out):
            if isinstance(out, tuple):
                x = out[0].clone()
                x[0, t] += delta
                return (x, *out[1:])
            out = out.clone()
            out[0, t] += delta
            return out

        logits = _run(model, clean, [(_mod(model.layers[layer], path), add, True)])
    base = _run(model, clean, [])
    a, d = pairs.answer[0], pairs.distractor[0]
    return (logits[a] - logits[d]) - (base[a] - base[d])


def test_joint_equals_sum_of_singles_when_linear_after_readers():
    model = tiny_model("llama")
    model.hf.model.norm = nn.Identity()  # with the last MLP silenced, the model is linear after the last layer's
    with torch.no_grad():  # v readers (fixed attention probabilities) and after the logits reader
        model.layers[2].mlp.down_proj.weight.zero_()
    pairs = random_pairs(lengths=(7,), seed=5)
    graph = EdgeGraph.of(model)
    names = ["L0.head.H1@2 -> L2.v.G0@2", "L1.mlp@3 -> L2.v.G1@3", "embed@6 -> L2.v.G0@6", "L0.mlp@6 -> logits@6",
             "L2.head.H4@6 -> logits@6", "L1.head.H0@6 -> logits@6"]
    patcher = EdgePatcher(model, pairs, graph=graph)
    singles = patcher.single(names)[:, 0]
    joint = patcher.effects(names, torch.ones(1, len(names), dtype=torch.bool))[0, 0]
    assert singles.abs().min() > 1e-5
    assert abs(float(joint - singles.sum())) < 1e-5 * max(1.0, float(singles.abs().sum()))
    # and where it is not linear (an MLP reader) joint differs from the sum
    nonlin = ["L0.head.H1@6 -> L1.mlp@6", "L0.mlp@6 -> L1.mlp@6"]
    s2 = patcher.single(nonlin)[:, 0]
    j2 = patcher.effects(nonlin, torch.ones(1, 2, dtype=torch.bool))[0, 0]
    assert abs(float(j2 - s2.sum())) > 1e-6


def test_aligned_positions_and_sets():
    model = tiny_model("gpt2")
    pairs = random_pairs(lengths=(6, 8), seed=2)
    graph = EdgeGraph.of(model)
    names = ["embed@1 -> L0.q.H0@1", "L0.mlp@7 -> logits@7", "L1.head.H2@5 -> L2.k.G3@5"]
    scores = edge_acp(model, pairs, names, per_pair=True)
    pp = scores.per_pair
    e = EdgeSet.from_names(graph, names)
    assert torch.isnan(pp[0, e.writer[0], e.reader[0], 1])  # pair 0 has 6 tokens: aligned position 1 is absent
    assert not torch.isnan(pp[1, e.writer[0], e.reader[0], 1])
    shifted = ["L0.mlp@5 -> logits@5", "L1.head.H2@3 -> L2.k.G3@3"]  # right-aligned: pair 0 starts at position 2
    alone = edge_acp(model, pairs.select([0]), shifted, per_pair=True).per_pair[0]
    torch.testing.assert_close(pp[0, e.writer[1:], e.reader[1:], e.pos[1:]], alone[e.writer[1:], e.reader[1:], e.pos[1:] - 2])
    frame = scores.to_frame()
    assert len(frame) == 3 and frame["score"].is_monotonic_decreasing
    patcher = EdgePatcher(model, pairs, graph=graph)
    sets = patcher.effects(names, [torch.tensor([0, 1]), torch.tensor([], dtype=torch.long), torch.tensor([2])])
    assert sets.shape == (3, 2) and (sets[1] == 0).all()
    torch.testing.assert_close(sets[2], patcher.single(names[2:])[0], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_edge_patch_equals_hand_path_patch_on_smollm(smollm):
    pairs = atpstar.tasks.ioi(smollm, n=1)
    graph = EdgeGraph.of(smollm)
    t = pairs.max_len - 1
    names = [f"L3.head.H5@{t} -> L7.k.G1@{t}", f"L0.mlp@{t} -> L12.q.H4@{t}", f"embed@{t} -> L2.v.G2@{t}",
             f"L20.head.H1@{t} -> L25.mlp@{t}", f"L29.mlp@{t} -> logits@{t}", f"L10.head.H0@{t} -> L10.mlp@{t}"]
    got = edge_acp(smollm, pairs, names, per_pair=True).per_pair[0]
    e = EdgeSet.from_names(graph, names)
    want = torch.tensor([hand_edge(smollm, "llama", pairs, n) for n in names])
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got[e.writer, e.reader, e.pos], want, atol=1e-4, rtol=1e-3)


def test_large_joint_subsets_chunked_and_capped(model, arch, monkeypatch):
    """Diagnostic-sized subsets (a third of every edge, every reader at every position): the writer deltas
    gathered in small chunks and the rows per forward capped by the reader deltas' memory give the same
    effects as one pass over all entries, and the cap does lower the rows per forward."""
    from atpstar.edges import reader_patch
    from atpstar.substrate.patching import auto_batch_size

    pairs = random_pairs(lengths=(6, 7), seed=6)
    graph = EdgeGraph.of(model)
    edges = EdgeSet.every(graph, pairs.max_len)
    members = torch.rand(5, len(edges), generator=torch.Generator().manual_seed(0)) < 0.3
    whole = EdgePatcher(model, pairs, graph=graph, batch_size=5).effects(edges, members)
    monkeypatch.setattr(reader_patch, "_CHUNK", 3 * model.d_model)  # 3 entries per gather
    small = EdgePatcher(model, pairs, graph=graph, memory_mb=1.0)
    rows = []
    monkeypatch.setattr(small, "_rows_per_batch", lambda n_tok, bounds, f=small._rows_per_batch: rows.append(
        (f(n_tok, bounds), auto_batch_size(model, n_tok, 1.0))) or rows[-1][0])
    chunked = small.effects(edges, members)
    assert whole.abs().min() > 1e-4
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
    for (size, auto), n_tok in zip(rows, (6, 7)):  # at most every reader at every position per row
        vectors = min(graph.n_readers * n_tok, int(members.sum(1).max())) * 8 * model.d_model * 4
        assert max(1, min(auto, int(1.0 * 2**20 // vectors))) <= size <= auto
    assert any(size < auto for size, auto in rows)
