"""Joint patching of node sets: additive where the model is linear after the nodes, equal to plain
torch hooks on a real model, and equal to single-node activation patching for sets of one."""

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf, tiny_model
from test_substrate import linear_after_node

import atpstar
from atpstar import NodeKind, NodeSet
from atpstar.substrate.joint import JointPatcher, joint_patch


@pytest.mark.parametrize("kind", [NodeKind.NEURON, NodeKind.HEAD])
def test_joint_patch_is_the_sum_of_single_patches_when_linear_after_nodes(kind):
    model, pairs, nodes, expected = linear_after_node(kind)
    sets = [[0], [1], [2], [0, 1], [0, 1, 2], []]
    got = joint_patch(model, pairs, nodes, [torch.tensor(s, dtype=torch.long) for s in sets])[:, 0]
    for s, value in zip(sets, got.tolist()):
        assert value == pytest.approx(sum(expected[i] for i in s), abs=1e-9)
    assert abs(sum(expected)) > 1e-3


def test_sets_of_one_node_equal_activation_patching(arch):
    model = tiny_model(arch)
    pairs = random_pairs(lengths=(6, 8))  # right-aligned lengths: nodes absent from the short pair
    frame = atpstar.acp(model, pairs, kinds="all", per_pair=True, progress=False)
    nodes = NodeSet.every(model, "all", pairs.max_len)
    pick = torch.randperm(len(nodes), generator=torch.Generator().manual_seed(0))[:40]
    got = joint_patch(model, pairs, nodes, [i[None] for i in pick], batch_size=13)
    for row, i in enumerate(pick.tolist()):
        node = nodes.take(slice(i, i + 1)).to_nodes()[0]
        for p in range(len(pairs)):
            want = float(frame.per_pair[node.kind][p, node.layer, node.unit, node.pos])
            want = 0.0 if want != want else want  # NaN: the node does not exist for this pair
            assert float(got[row, p]) == pytest.approx(want, abs=1e-5), (node, p)


def test_joint_patch_equals_plain_torch_hooks():
    """Sets of neurons and head outputs across layers and positions, against hand-written hooks on the
    down and output projections (float64: the two differ only by the batched pass's matmul shapes)."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(9,), seed=3)
    gen = torch.Generator().manual_seed(2)
    every = NodeSet.every(model, ["neuron", "head"], pairs.max_len)
    sets = [torch.randperm(len(every), generator=gen)[: int(n)] for n in (1, 5, 30, 200)]
    got = joint_patch(model, pairs, every, sets)[:, 0]
    for s, value in zip(sets, got.tolist()):
        assert value == pytest.approx(_hooked_effect(model, pairs, every.take(s)), abs=1e-10)
    assert got.abs().max() > 1e-3


def _hooked_effect(model, pairs, nodes: NodeSet) -> float:
    """Patch ``nodes`` (neurons, heads) with plain forward pre-hooks; return the metric change."""
    d_head = model.d_head

    def inputs(ids):
        seen = {}
        handles = [getattr(b.mlp.down_proj, "register_forward_pre_hook")(
            lambda m, a, l=l: seen.__setitem__(("neuron", l), a[0].clone())) for l, b in enumerate(model.layers)]
        handles += [b.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, l=l: seen.__setitem__(("head", l), a[0].clone())) for l, b in enumerate(model.layers)]
        with torch.no_grad():
            logits = model.hf(input_ids=ids[None]).logits[0, -1]
        for h in handles:
            h.remove()
        return seen, logits

    noise, _ = inputs(pairs.noise[0])
    _, clean_logits = inputs(pairs.clean[0])

    def writer(site, layer):
        def hook(m, a):
            x = a[0].clone()
            for node in nodes.to_nodes():
                if node.kind.value == site and node.layer == layer:
                    cols = slice(node.unit, node.unit + 1) if site == "neuron" else slice(node.unit * d_head, (node.unit + 1) * d_head)
                    x[0, node.pos, cols] = noise[(site, layer)][0, node.pos, cols]
            return (x,)
        return hook

    handles = [b.mlp.down_proj.register_forward_pre_hook(writer("neuron", l)) for l, b in enumerate(model.layers)]
    handles += [b.self_attn.o_proj.register_forward_pre_hook(writer("head", l)) for l, b in enumerate(model.layers)]
    with torch.no_grad():
        logits = model.hf(input_ids=pairs.clean[0][None]).logits[0, -1]
    for h in handles:
        h.remove()
    a, d = int(pairs.answer[0]), int(pairs.distractor[0])
    return float((logits[a] - logits[d]) - (clean_logits[a] - clean_logits[d]))


def test_membership_matrix_and_index_lists_agree(model):
    pairs = random_pairs(lengths=(7, 7))
    patcher = JointPatcher(model, pairs, kinds="all")
    nodes = NodeSet.every(model, "all", pairs.max_len)
    members = torch.rand(6, len(nodes), generator=torch.Generator().manual_seed(1)) < 0.1
    a = patcher.effects(nodes, members)
    b = patcher.effects(nodes, [m.nonzero().flatten() for m in members])
    assert torch.allclose(a, b, atol=1e-6)
    assert a.abs().max() > 1e-3
    assert patcher.stats["patched_rows"] == 2 * 6 * 2


def test_joint_patch_bad_input(model):
    pairs = random_pairs(lengths=(7,))
    nodes = NodeSet.every(model, "q", pairs.max_len)
    with pytest.raises(ValueError, match="no node sets"):
        joint_patch(model, pairs, nodes, [])
    with pytest.raises(IndexError, match="outside"):
        joint_patch(model, pairs, nodes, [torch.tensor([len(nodes)])])
    with pytest.raises(ValueError, match="batch_size"):
        joint_patch(model, pairs, nodes, [torch.tensor([0])], batch_size=0)
    patcher = JointPatcher(model, pairs, kinds="q")
    with pytest.raises(ValueError, match="not captured"):
        patcher.effects(NodeSet.every(model, "v", pairs.max_len), [torch.tensor([0])])


@pytest.mark.slow
def test_joint_patch_on_smollm_equals_plain_hooks(smollm):
    pairs = atpstar.tasks.ioi(smollm, n=1, seed=0)
    every = NodeSet.every(smollm, ["neuron", "head"], pairs.max_len)
    sets = [torch.randperm(len(every), generator=torch.Generator().manual_seed(n))[:n] for n in (3, 40, 400)]
    got = joint_patch(smollm, pairs, every, sets)[:, 0]
    for s, value in zip(sets, got.tolist()):
        assert value == pytest.approx(_hooked_effect(smollm, pairs, every.take(s)), abs=2e-4)
