"""Ungrouped key/value heads (one key and value input per query head, as TransformerLens's ungrouped attention and
MIB's graphs have), on the tiny GQA models (Llama: 6 heads, 2 kv heads; Gemma 3: 4 heads, 1 kv head), float64:
the same outputs; edge estimates that add up per group to the grouped ones; exact patches of all of a group's
query-head copies equal to the grouped exact patch; faithfulness's ends still the clean and noise runs."""

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf

import atpstar
from atpstar.circuits import empty_circuit, faithfulness, full_circuit
from atpstar.circuits.build import exact_effects
from atpstar.edges import EdgeGraph
from atpstar.edges.atp import atp
from atpstar.substrate.capture import run

GQA = ["llama", "gemma3"]


def _model(arch):
    return atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)


def _kv_map(grouped, ungrouped, model):
    """{ungrouped k/v reader index: the grouped reader of its query head's group}."""
    rep = model.n_heads // model.n_kv_heads
    out = {}
    for i, name in enumerate(ungrouped.reader_names):
        layer, kind, unit = name.split(".") if name.count(".") == 2 else (None, None, None)
        if kind in ("k", "v"):
            out[i] = grouped.reader_names.index(f"{layer}.{kind}.G{int(unit[1:]) // rep}")
    return out


@pytest.mark.parametrize("arch", GQA)
def test_same_outputs_and_a_key_value_input_per_query_head(arch):
    model = _model(arch)
    flat = atpstar.ungroup_kv(model)
    assert (flat.n_heads, flat.n_kv_heads) == (model.n_heads, model.n_heads) and model.n_kv_heads < model.n_heads
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(run(flat, ids, last_only=False), run(model, ids, last_only=False), rtol=1e-10, atol=1e-10)
    g, u = EdgeGraph.of(model), EdgeGraph.of(flat)
    n_kv = sum(n.split(".")[1] in ("k", "v") for n in g.reader_names if n.count(".") == 2)
    n_kv_flat = sum(n.split(".")[1] in ("k", "v") for n in u.reader_names if n.count(".") == 2)
    assert n_kv_flat == n_kv * model.n_heads // model.n_kv_heads
    assert EdgeGraph.of(model).shape == g.shape  # the original model is left as it was


@pytest.mark.parametrize("arch", GQA)
def test_edge_estimates_add_up_per_group(arch):
    model, pairs = _model(arch), random_pairs((7, 9), seed=1)
    flat = atpstar.ungroup_kv(model)
    grouped = atp(model, pairs, qk_fix=False, graddrop=False)
    split = atp(flat, pairs, qk_fix=False, graddrop=False)
    g, u = grouped.graph, split.graph
    mapping = _kv_map(g, u, model)
    assert len(mapping) > 0
    total = torch.zeros_like(grouped.effect).nan_to_num()
    for r_u, name in enumerate(u.reader_names):
        r_g = mapping.get(r_u, g.reader_names.index(name) if name in g.reader_names else None)
        total[:, r_g] += split.effect[:, r_u].nan_to_num().double()
    want = grouped.effect.nan_to_num().double()
    # to float32 rounding: the attention's softmax and RMSNorm compute in float32 even in a float64 model
    torch.testing.assert_close(total, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert float(want.abs().max()) > 0.1


@pytest.mark.parametrize("arch", GQA)
def test_exact_patch_of_all_query_head_copies_is_the_grouped_patch(arch):
    model, pairs = _model(arch), random_pairs((8, 8), seed=2)
    flat = atpstar.ungroup_kv(model)
    g, u = EdgeGraph.of(model), EdgeGraph.of(flat)
    mapping = _kv_map(g, u, model)
    writer = g.writer_names.index("L0.mlp")
    targets = sorted(r for r in set(mapping.values()) if int(g.reader_layer[r]) > 0)
    assert len(targets) >= 2
    for r_g in targets[:4]:
        copies = [r for r, target in mapping.items() if target == r_g]
        grouped = exact_effects(model, pairs, torch.tensor([[writer, r_g]]))[0]
        circuit = full_circuit(u)
        circuit[writer, copies] = False
        together = faithfulness(flat, pairs, [full_circuit(u), circuit])
        torch.testing.assert_close(together.metric[1] - together.metric[0], grouped[0], rtol=1e-7, atol=1e-9)
        assert len(copies) == model.n_heads // model.n_kv_heads and abs(float(grouped[0].abs().max())) > 1e-4
    ends = faithfulness(flat, pairs, [empty_circuit(u), full_circuit(u)])
    torch.testing.assert_close(ends.metric[1], ends.clean)
    torch.testing.assert_close(ends.metric[0], ends.noise)


def test_models_without_grouping_and_bad_input():
    model = _model("gpt2")
    assert atpstar.ungroup_kv(model) is model
    with pytest.raises(TypeError, match="atpstar Model"):
        atpstar.ungroup_kv(tiny_hf("llama"))
