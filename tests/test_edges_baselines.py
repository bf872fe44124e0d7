"""The paper's baselines on edges where the answer is known.

``linear()``: a float64 Llama with the final norm removed and the last layer's MLP silenced, so the
model is linear after the ``logits`` reader (edges into it add exactly) and after the last layer's
value readers (fixed attention probabilities: edges into one value reader at *different* positions
add exactly). One last-layer head's output projection is scaled up, planting one large edge
``L2.head.H{h}@6 -> logits@6``, 3x the largest other edge.
"""

import math

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf, tiny_model
from torch import nn

import atpstar
from atpstar import Cost, PromptPairs
from atpstar.edges import EdgeGraph, EdgeSet, blocks, edge_acp, hierarchical, iterative, subsampling
from atpstar.edges.patching import EdgePatcher

T = 7


def float64_llama():
    """float64, so that patches computed in different batches (from different layers) agree to 1e-12."""
    return atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)


def linear(n_pairs: int = 1, plant: float = 3.0):
    """Model, pairs (all of length T), the planted edge's name."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    model.hf.model.norm = nn.Identity()
    base = random_pairs(lengths=(T,) * n_pairs, seed=5)
    a, d = int(base.answer[0]), int(base.distractor[0])
    pairs = PromptPairs.from_ids(base.clean, base.noise, [a] * n_pairs, [d] * n_pairs, metric="logit_diff")
    last = model.layers[2]
    graph = EdgeGraph.of(model)
    with torch.no_grad():
        last.mlp.down_proj.weight.zero_()
        names = logits_scope(model, positions=[T - 1])
        before = edge_acp(model, pairs, names)
        values = before.effect[:, -1, T - 1]  # every writer's edge into the logits at the last position
        heads = (graph.writer_layer == 2) & (graph.writer_kind == 1)
        w = int(torch.where(heads, values.abs(), -1.0).argmax())
        others = float(values.abs()[torch.arange(len(values)) != w].max())
        D = model.d_model // model.n_heads
        h = int(graph.writer_unit[w])
        last.self_attn.o_proj.weight[:, h * D:(h + 1) * D] *= plant * others / abs(float(values[w]))
    return model, pairs, f"L2.head.H{h}@{T - 1} -> logits@{T - 1}"


def logits_scope(model, positions=range(T)):
    """Every writer -> logits edge at every position (effects exactly additive in ``linear()``)."""
    graph = EdgeGraph.of(model)
    return [f"{w}@{t} -> logits@{t}" for w in graph.writer_names for t in positions]


def value_edges(positions=range(T)):
    """Edges into two last-layer value readers, one writer each, at every position."""
    return [f"{w}@{t} -> L2.v.G{g}@{t}" for w, g in (("L0.mlp", 0), ("L1.head.H0", 1)) for t in positions]


def flat(scores, edges: EdgeSet, which: str = "effect") -> torch.Tensor:
    return getattr(scores, which)[edges.writer, edges.reader, edges.pos]


def some_edges(model, n: int, n_pos: int, seed: int = 0) -> EdgeSet:
    every = EdgeSet.every(EdgeGraph.of(model), n_pos)
    return every.take(torch.randperm(len(every), generator=torch.Generator().manual_seed(seed))[:n])


# --- blocks ----------------------------------------------------------------------------------------
def test_blocks_of_one_edge_are_exact_edge_patching():
    model = float64_llama()
    pairs = random_pairs(lengths=(7, 7), seed=3)
    edges = some_edges(model, 80, 7)
    got = blocks(model, pairs, edges=edges, size=1)
    truth = edge_acp(model, pairs, edges)
    assert flat(truth, edges).abs().max() > 1e-3
    torch.testing.assert_close(flat(got, edges), flat(truth, edges), atol=1e-6, rtol=0)
    assert torch.equal(flat(got, edges, "score"), flat(got, edges).abs())
    assert got.info["blocks"] == 80 and int(got.score.isfinite().sum()) == 80  # NaN outside the scope


@pytest.mark.parametrize("order", ["writer", "position"])
def test_block_effect_is_the_sum_of_its_members_exact_effects(order):
    model, pairs, _ = linear(n_pairs=2)
    graph = EdgeGraph.of(model)
    names = logits_scope(model) + value_edges()
    edges = EdgeSet.from_names(graph, names)
    size = 3
    got = blocks(model, pairs, edges=names, size=size, order=order)
    single = flat(edge_acp(model, pairs, edges), edges)
    # blocks by hand: per reader, edges sorted writer-major (or position-major), cut every `size`
    expect = torch.zeros(len(edges), dtype=torch.float64)
    for reader in edges.reader.unique():
        idx = (edges.reader == reader).nonzero().flatten().tolist()
        key = (lambda i: (int(edges.writer[i]), int(edges.pos[i]))) if order == "writer" else \
            (lambda i: (int(edges.pos[i]), int(edges.writer[i])))
        idx.sort(key=key)
        for lo in range(0, len(idx), size):
            members = idx[lo:lo + size]
            expect[members] = single[members].sum()
    assert single.abs().max() > 0.1 and (expect != 0).sum() > 5
    torch.testing.assert_close(flat(got, edges), expect, atol=1e-9, rtol=1e-9)
    n_blocks = sum(math.ceil(int((edges.reader == r).sum()) / size) for r in edges.reader.unique())
    assert got.info["blocks"] == n_blocks and got.info["order"] == order


def test_blocks_cover_every_edge_by_default_and_count_their_cost():
    model = tiny_model("gpt2")
    pairs = random_pairs(lengths=(6, 8), seed=2)
    graph = EdgeGraph.of(model)
    got = blocks(model, pairs, size=64, batch_size=7)
    assert torch.equal(got.score.isfinite(), graph.valid[..., None].expand_as(got.score))
    for k in (1, 7, 64, 65, 200):  # members of a block tie: top(k) is still the head of the full ranking
        assert got.top(k)["name"].tolist() == got.to_frame()["name"].head(k).tolist()
    cost = Cost.of(got)
    assert cost.pairs == 2 and cost.forward > 4 * 2  # the captures plus the patches
    # size 1 costs what the EdgePatcher spends on the same single-edge patches
    edges = some_edges(model, 40, 8, seed=1)
    one = blocks(model, pairs, edges=edges, size=1, batch_size=7)
    patcher = EdgePatcher(model, pairs, batch_size=7)
    order = torch.argsort((graph.reader_layer[edges.reader] * graph.n_readers + edges.reader) * 10**6
                          + edges.writer * 100 + edges.pos)
    patcher.single(edges.take(order))
    assert Cost.of(one).forward == pytest.approx(patcher.stats["forward_equivalents"], rel=1e-12)
    assert Cost.of(one).forward > 4 * 2


# --- hierarchical --------------------------------------------------------------------------------
def test_hierarchical_threshold_zero_reaches_every_edge_exactly():
    model = float64_llama()
    pairs = random_pairs(lengths=(7,), seed=4)
    edges = some_edges(model, 60, 7, seed=2)
    got = hierarchical(model, pairs, edges=edges, threshold=0.0, relative=False, branching=3)
    truth = flat(edge_acp(model, pairs, edges), edges)
    # every edge with an effect ends as a leaf (exact); the others too, or inside a group of effect exactly 0
    nonzero = truth != 0
    assert got.info["leaves"] >= int(nonzero.sum()) > 10
    torch.testing.assert_close(flat(got, edges)[nonzero], truth[nonzero], atol=1e-6, rtol=0)
    torch.testing.assert_close(flat(got, edges), truth, atol=1e-6, rtol=0)
    assert got.info["groups"][0] == len(EdgeGraph.of(model).reader_layer[edges.reader].unique())  # level 0: reader layers
    # leaves are ranked first, by |exact effect|
    top = got.to_frame().head(int(nonzero.sum()))
    assert (top["effect"].abs().diff().dropna() <= 1e-12).all()


def test_hierarchical_descends_reader_layer_reader_writer_position():
    model, pairs, plant = linear()
    names = logits_scope(model) + value_edges()
    got = hierarchical(model, pairs, edges=names, branching=2, threshold=0.5, relative=True)
    groups = got.info["groups"]
    assert groups[0] == 2  # the reader layers: L2 (values) and the logits
    truth = edge_acp(model, pairs, names)
    assert plant in truth.top(2)["name"].tolist()
    assert got.top(2)["name"].tolist() == truth.top(2)["name"].tolist()  # the two large edges, found exactly
    torch.testing.assert_close(torch.tensor(got.top(2)["effect"].to_numpy()), torch.tensor(truth.top(2)["effect"].to_numpy()))
    assert len(groups) >= 4 and got.info["leaves"] >= 2 and sum(groups) < len(names)  # deep, yet not everything


# --- subsampling -----------------------------------------------------------------------------------
def test_subsampling_is_unbiased_on_additive_edges_and_finds_the_planted_one():
    """Additive effects: estimate − truth has standard error ≈ sqrt(Σ I² / samples)."""
    model, pairs, plant = linear()
    names = logits_scope(model)
    edges = EdgeSet.from_names(EdgeGraph.of(model), names)
    truth = flat(edge_acp(model, pairs, edges), edges)
    joint = EdgePatcher(model, pairs).effects(edges, torch.ones(1, len(edges), dtype=torch.bool))[0, 0]
    assert float(joint) == pytest.approx(float(truth.sum()), abs=1e-9)  # additive indeed
    samples = 1500
    got = subsampling(model, pairs, edges=names, p=0.3, samples=samples, seed=1)
    estimate = flat(got, edges)
    se = math.sqrt(float((truth**2).sum()) / samples)
    assert (estimate - truth).abs().max() < 5 * se
    assert float((estimate - truth).pow(2).mean().sqrt()) < 1.5 * se
    assert got.top(1)["name"].tolist() == [plant]
    assert got.info["unestimated"] == 0 and got.info["samples"] == samples
    again = subsampling(model, pairs, edges=names, p=0.3, samples=40, seed=1, memory_mb=0.01)  # chunked
    first = subsampling(model, pairs, edges=names, p=0.3, samples=40, seed=1)
    torch.testing.assert_close(flat(again, edges), flat(first, edges), atol=1e-12, rtol=0, equal_nan=True)


# --- recall cost and verification -----------------------------------------------------------------
def test_recall_cost_and_verification_take_the_baselines():
    model = tiny_model("llama")
    pairs = random_pairs(lengths=(7, 7), seed=6)
    edges = some_edges(model, 50, 7, seed=3)
    truth = edge_acp(model, pairs, edges)
    oracle = atpstar.recall_cost(truth, truth, k=10)
    assert oracle["cost"].tolist() == list(range(1, 11))
    for method, options in ((subsampling, {"p": 0.2, "samples": 30}), (blocks, {"size": 4}), (hierarchical, {}),
                            (iterative, {"per_round": 3})):
        ranking = method(model, pairs, edges=edges, **options)
        curve = atpstar.recall_cost(ranking, truth, k=10, estimation_cost=ranking)
        assert (curve["cost"] >= curve["k"]).all() and (curve["estimation"] == Cost.of(ranking).per_pair()).all()
        assert Cost.of(ranking).per_pair() > 0
        checked = atpstar.verify(model, pairs, ranking, budget=atpstar.Budget(nodes=5))
        assert len(checked) == 5
        ids = checked.edges.ids(ranking.graph, 7)
        torch.testing.assert_close(checked.effect, truth.effect.flatten()[ids], atol=1e-6, rtol=1e-5)  # float32: batches of other sizes round differently


def test_iterative_on_edges_follows_its_schedule_exactly():
    """Iterative on edges: every round patches the unverified edges exactly on one more pair (pairs of two
    lengths: an edge absent from a pair is not counted there); the per_round edges with the largest |running
    mean| are verified on the remaining pairs. All rounds: every edge exact (= edge_acp). One round: the
    picked edges are the top |effect on the first pair of the order|, and theirs is the exact mean."""
    model = float64_llama()
    pairs = random_pairs(lengths=(6, 7, 7), seed=4)
    edges = some_edges(model, 60, 7, seed=5)
    truth = edge_acp(model, pairs, edges, per_pair=True)
    full = iterative(model, pairs, edges=edges, per_round=4, seed=1)
    torch.testing.assert_close(flat(full, edges), flat(truth, edges), atol=1e-9, rtol=0)
    assert full.info["verified"] == 60 and full.info["rounds"] == 3 and Cost.of(full).per_pair() > 0
    one = iterative(model, pairs, edges=edges, per_round=4, rounds=1, seed=1)
    first = one.info["pair_order"][0]
    on_first = truth.per_pair[first].flatten()[edges.ids(EdgeGraph.of(model), 7)].double()  # float32 per pair
    picked = torch.topk(on_first.abs().nan_to_num(-1.0), 4).indices
    top = torch.topk(flat(one, edges, "score"), 4).indices  # verified edges rank first
    assert set(top.tolist()) == set(picked.tolist())
    torch.testing.assert_close(flat(one, edges)[picked], flat(truth, edges)[picked], atol=1e-9, rtol=0)
    rest = torch.ones(60, dtype=torch.bool)
    rest[picked] = False
    seen = on_first.isfinite() & rest
    torch.testing.assert_close(flat(one, edges)[seen], on_first[seen], atol=1e-6, rtol=1e-6)  # the running mean
    assert bool(flat(one, edges)[rest & ~on_first.isfinite()].isnan().all())  # absent from the pair seen: no estimate


# --- bad input -------------------------------------------------------------------------------------
def test_bad_input_is_refused_clearly():
    model = tiny_model("llama")
    pairs = random_pairs(lengths=(6, 6))
    ok = ["embed@1 -> L0.q.H0@1"]
    cases = [
        (subsampling, {"p": 0.0}, ValueError, "p must be a probability"),
        (subsampling, {"p": 1.5}, ValueError, "each edge's chance"),
        (subsampling, {"samples": 1}, ValueError, "samples must be an integer >= 2"),
        (blocks, {"size": 0}, ValueError, "size must be an integer >= 1"),
        (blocks, {"order": "layer"}, ValueError, "order must be one of"),
        (hierarchical, {"branching": 1}, ValueError, "branching must be an integer >= 2"),
        (hierarchical, {"threshold": -1.0}, ValueError, "threshold must be a finite number >= 0"),
        (hierarchical, {"threshold": 1.0}, ValueError, "must be below 1"),
        (blocks, {"edges": ["L2.mlp@1 -> L1.q.H0@1"]}, ValueError, "does not exist"),
        (blocks, {"edges": ["L0.head.H9@1 -> L1.q.H0@1"]}, ValueError, "unknown writer"),
        (subsampling, {"edges": ["embed@40 -> L0.q.H0@40"]}, IndexError, "out of range"),
        (hierarchical, {"edges": []}, ValueError, "empty edge set"),
        (blocks, {"edges": "embed@1 -> L0.q.H0@1"}, TypeError, "wrap it in a list"),
        (iterative, {"per_round": 0}, ValueError, "per_round must be an integer >= 1"),
        (iterative, {"rounds": 3}, ValueError, "rounds must be at most the number of pairs"),
    ]
    for method, options, error, message in cases:
        options = {"edges": ok, **options}
        with pytest.raises(error, match=message):
            method(model, pairs, **options)


def test_hierarchical_leaves_at_positions_some_pairs_lack_are_exact():
    """Prompts of 5 and 8 tokens (right-aligned): an edge at aligned position 0-2 exists on the longer pair only.
    Its leaf effect is its mean over the pairs that have it, as edge_acp's (on SmolLM2 IOI such leaves were
    half their exact effect: -3.03 against -6.05), and leaves are ranked by that."""
    model = float64_llama()
    pairs = random_pairs(lengths=(5, 8), seed=4)
    edges = some_edges(model, 60, 8, seed=3)
    early = edges.pos < 3
    assert 5 < int(early.sum()) < len(edges)
    got = hierarchical(model, pairs, edges=edges, threshold=0.0, relative=False, branching=3)
    truth = flat(edge_acp(model, pairs, edges), edges)
    nonzero = truth != 0
    assert int((nonzero & early).sum()) > 3
    torch.testing.assert_close(flat(got, edges)[nonzero], truth[nonzero], atol=1e-6, rtol=0)
    top = got.to_frame().head(int(nonzero.sum()))
    assert (top["effect"].abs().diff().dropna() <= 1e-12).all()
