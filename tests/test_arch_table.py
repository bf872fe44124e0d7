"""The architecture table (``substrate/arch.py``) is the one place an architecture is described, for
nodes and edges alike: every row is checked on a tiny random model of its ``model_type``, including
the rows no other test builds a model for (Mistral, Qwen2, Qwen3).

For each row: the hooked model's logits equal the model's own (the node sites), and every edge
reader's input is exactly the sum of the writes of the writers that have an edge into it (the edge
sites: each write's module, each reader's norm, which edges exist, the per-head split of the
attention write). A new row that passes these works for both."""

import pytest
import torch
from conftest import TINY, VOCAB, StubTokenizer
from transformers import AutoConfig, AutoModelForCausalLM

import atpstar
from atpstar.edges import EdgeGraph
from atpstar.edges.graph import LOGITS, MLP_IN
from atpstar.edges.sites import block_module, final_norm
from atpstar.edges.writes import capture_writes
from atpstar.substrate.arch import ARCHS, get_module
from atpstar.substrate.capture import Intervention

SMALL = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, head_dim=12, max_position_embeddings=64, initializer_range=0.3)


def tiny(model_type: str) -> atpstar.Model:
    """A float64 tiny random model of ``model_type``: the conftest config where it has one, else a generic one."""
    torch.manual_seed(0)
    family = ARCHS[model_type].family
    config = TINY[family]() if family in TINY else AutoConfig.for_model(model_type, **SMALL)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float64).eval()
    return atpstar.load_model(hf, tokenizer=StubTokenizer(), dtype=torch.float64)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_every_row_names_modules_that_exist_and_hooked_logits_are_exact(model_type):
    model = tiny(model_type)
    arch = model.arch
    assert get_module(model.hf, arch.layers) is not None and final_norm(model) is not None
    for path in (arch.attn, arch.mlp, arch.down, arch.attn_norm, arch.mlp_norm, *arch.qkv, arch.o_proj,
                 arch.attn_write, arch.mlp_write):
        block_module(model, 0, path)  # AttributeError naming the path if the row is wrong
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model.hf(input_ids=ids).logits
        with Intervention(model, capture=frozenset({"q", "k", "v", "head", "neuron", "resid"})):
            hooked = model.hf(input_ids=ids).logits
    assert plain.abs().mean() > 0.1
    torch.testing.assert_close(hooked, plain, rtol=0, atol=1e-12)


def _reader_inputs(model, ids) -> dict:
    """{(layer, "attn" | "mlp" | "logits"): input of that reader's norm} of one clean run."""
    seen, handles = {}, []
    for layer in range(model.n_layers):
        for name, path in (("attn", model.arch.attn_norm), ("mlp", model.arch.mlp_norm)):
            hook = lambda m, args, key=(layer, name): seen.__setitem__(key, args[0].detach())  # noqa: E731
            handles.append(block_module(model, layer, path).register_forward_pre_hook(hook))
    handles.append(final_norm(model).register_forward_pre_hook(
        lambda m, args: seen.__setitem__((model.n_layers, "logits"), args[0].detach())))
    try:
        with torch.no_grad():
            model.hf(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_every_reader_reads_the_sum_of_the_writes_with_an_edge_into_it(model_type):
    model = tiny(model_type)
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(2))
    seen = _reader_inputs(model, ids)
    for per_head in (False, True) if model.arch.heads_additive else (False,):
        graph = EdgeGraph.of(model, per_head=per_head)
        writes = capture_writes(model, graph, ids)[0][0].double()  # (W, T, d)
        if per_head:  # a shared output-projection bias belongs to no head: it stays in the clean part
            bias = [getattr(block_module(model, layer, model.arch.o_proj), "bias", None)
                    for layer in range(model.n_layers)]
        for r, (layer, kind) in enumerate(zip(graph.reader_layer.tolist(), graph.reader_kind.tolist())):
            name = "logits" if kind == LOGITS else "mlp" if kind == MLP_IN else "attn"
            expected = writes[graph.valid[:, r]].sum(0)
            if per_head:
                expected = expected + sum(b for b, l in zip(bias, range(model.n_layers)) if b is not None and
                                          (l < layer or (l == layer and name == "mlp" and not graph.parallel_residual)))
            torch.testing.assert_close(expected, seen[(layer, name)][0], rtol=0, atol=1e-10,
                                       msg=lambda m: f"{graph.reader_names[r]} (per_head={per_head}): {m}")
