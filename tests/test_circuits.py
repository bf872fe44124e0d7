"""Circuit evaluation (faithfulness) against runs whose outcome is known exactly, in float64 on the tiny model of
every architecture: the empty circuit is the noise run, the full circuit the clean run, no edge into ``logits``
the noise run, every edge but those into one reader the joint exact patch of that reader's incoming edges, a
node circuit without one writer the run with that writer's output replaced by its noise output."""

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf

import atpstar
from atpstar.circuits import empty_circuit, faithfulness, full_circuit, node_circuit
from atpstar.circuits import mib_scores, top_n
from atpstar.circuits.mixture import MixedRun, outside_mask
from atpstar.edges import EdgeGraph
from atpstar.edges.eap_ig import eap
from atpstar.edges.edgeset import EdgeSet
from atpstar.edges.patching import edge_patch
from atpstar.edges.sites import block_module, first
from atpstar.edges.writes import capture_writes
from atpstar.substrate.capture import run

ARCHS = ["llama", "gpt2", "gpt_neox", "gemma3"]


def _model(arch):
    return atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)


def _logits(model, graph, clean, noise, circuit):
    """(T, V) logits at every position of the clean prompt run as the circuit (one pair, one circuit)."""
    noise_w, _, _ = capture_writes(model, graph, noise[None])
    hooks = MixedRun(model, graph=graph, noise=noise_w, outside=outside_mask(graph, circuit[None]))
    with torch.no_grad():
        return run(model, clean[None], hooks, last_only=False)[0]


def _plain(model, ids):
    with torch.no_grad():
        return run(model, ids[None], last_only=False)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_full_and_no_logits_edge_circuits_are_the_noise_and_clean_runs(arch):
    model, pairs = _model(arch), random_pairs(lengths=(8,))
    graph = EdgeGraph.of(model)
    clean, noise = pairs.clean[0], pairs.noise[0]
    no_logits = full_circuit(graph)
    no_logits[:, graph.reader_names.index("logits")] = False
    torch.testing.assert_close(_logits(model, graph, clean, noise, empty_circuit(graph)), _plain(model, noise))
    torch.testing.assert_close(_logits(model, graph, clean, noise, full_circuit(graph)), _plain(model, clean))
    torch.testing.assert_close(_logits(model, graph, clean, noise, no_logits), _plain(model, noise))
    assert not torch.allclose(_plain(model, clean), _plain(model, noise))


@pytest.mark.parametrize("arch", ARCHS)
def test_all_edges_but_one_readers_are_the_joint_exact_patch_of_that_readers_edges(arch):
    """Pairs of two lengths (right-aligned positions); readers of every kind; the truth is atpstar's exact joint
    edge patch (its own patching machinery), evaluated per pair."""
    model, pairs = _model(arch), random_pairs(lengths=(7, 9, 9))
    graph = EdgeGraph.of(model)
    names = ["L1.q.H1", "L1.k.G0", "L2.v.G0", "L1.mlp", "logits"]
    circuits, truth = [], []
    every = EdgeSet.every(graph, pairs.max_len)
    for name in names:
        r = graph.reader_names.index(name)
        circuit = full_circuit(graph)
        circuit[:, r] = False
        circuits.append(circuit)
        truth.append(edge_patch(model, pairs, every.take(every.reader == r), graph=graph)[0])
    result = faithfulness(model, pairs, circuits, graph=graph)
    torch.testing.assert_close(result.metric - result.clean, torch.stack(truth), rtol=1e-9, atol=1e-9)
    assert (torch.stack(truth).abs().amax(1) > 1e-2).all()  # every patch moves the metric


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_a_node_circuit_without_one_writer_replaces_that_writers_output_by_its_noise_output(arch):
    model, pairs = _model(arch), random_pairs(lengths=(8,))
    graph = EdgeGraph.of(model)
    sites = model.arch
    module = block_module(model, 1, sites.mlp_write)
    seen = {}
    handle = module.register_forward_hook(lambda m, a, out: seen.__setitem__("noise", first(out).detach()))
    _plain(model, pairs.noise[0])
    handle.remove()
    swap = lambda m, a, out: (seen["noise"], *out[1:]) if isinstance(out, tuple) else seen["noise"]  # noqa: E731
    handle = module.register_forward_hook(swap)
    truth = _plain(model, pairs.clean[0])
    handle.remove()
    keep = [n for n in graph.writer_names if n != "L1.mlp"]
    got = _logits(model, graph, pairs.clean[0], pairs.noise[0], node_circuit(graph, keep))
    torch.testing.assert_close(got, truth)
    assert not torch.allclose(got, _plain(model, pairs.clean[0]))


def test_per_position_circuits_match_position_free_ones_and_exact_patches_at_one_position():
    model, pairs = _model("llama"), random_pairs(lengths=(7, 9))
    graph = EdgeGraph.of(model)
    n_pos = pairs.max_len
    r, t = graph.reader_names.index("L2.mlp"), n_pos - 1
    spread = full_circuit(graph)[..., None].expand(-1, -1, n_pos).clone()
    one_spot = spread.clone()
    one_spot[:, r, t] = False
    result = faithfulness(model, pairs, [spread, one_spot], graph=graph)
    edges = EdgeSet.every(graph, n_pos)
    truth = edge_patch(model, pairs, edges.take((edges.reader == r) & (edges.pos == t)), graph=graph)[0]
    torch.testing.assert_close(result.metric[0], result.clean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(result.metric[1] - result.clean, truth, rtol=1e-9, atol=1e-9)
    named = faithfulness(model, pairs, [[f"{w} -> L2.mlp" for w in ("embed", "L0.mlp", "L1.mlp")]], graph=graph)
    mask = torch.zeros(graph.shape, dtype=torch.bool)
    mask[graph.writer_index(["embed", "L0.mlp", "L1.mlp"]), r] = True
    torch.testing.assert_close(named.metric, faithfulness(model, pairs, mask, graph=graph).metric)


def test_faithfulness_averages_the_metric_before_the_ratio_and_batching_changes_nothing():
    model, pairs = _model("gpt2"), random_pairs(lengths=(7, 9, 9, 7))
    graph = EdgeGraph.of(model)
    gen = torch.Generator().manual_seed(0)
    circuits = [(torch.rand(graph.shape, generator=gen) < p) & graph.valid for p in (0.2, 0.5, 0.9)]
    batched = faithfulness(model, pairs, circuits, graph=graph)
    alone = torch.stack([faithfulness(model, pairs, c, graph=graph, batch_size=1).metric[0] for c in circuits])
    torch.testing.assert_close(batched.metric, alone, rtol=1e-12, atol=1e-12)
    m, clean, noise = batched.metric.mean(1), batched.clean.mean(), batched.noise.mean()
    torch.testing.assert_close(batched.f, (m - noise) / (clean - noise))
    torch.testing.assert_close(batched.per_pair(), (batched.metric - batched.noise) / (batched.clean - batched.noise))
    assert not torch.allclose(batched.f, batched.per_pair().mean(1))  # the two averages differ here
    assert batched.info["cost"].forward == len(pairs) * (len(circuits) + 2)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma3"])
def test_small_circuits_sum_the_inside_edges_as_large_ones_sum_the_outside_edges(arch, monkeypatch):
    """Small circuits subtract their few inside edges from the readers' whole sum; the plain sum over outside
    edges (the definition) gives the same metric, position-free and per position."""
    model, pairs = _model(arch), random_pairs(lengths=(7, 9))
    graph = EdgeGraph.of(model)
    ranking = mib_scores(eap(model, pairs), pairs)
    free = [top_n(graph, ranking, int(p * graph.n_edges()), True) for p in (0.02, 0.1)]  # connected circuits
    gen = torch.Generator().manual_seed(1)
    spots = free[1][..., None] & (torch.rand((*graph.shape, pairs.max_len), generator=gen) < 0.7)
    fast = faithfulness(model, pairs, free, graph=graph).metric, faithfulness(model, pairs, spots, graph=graph).metric

    def plain(self, readers):
        mask = self.outside[:, :self._filled, readers]
        spec = "bwtd,bwr->brtd" if mask.ndim == 3 else "bwtd,bwrt->brtd"
        return torch.einsum(spec, self._diff[:, :self._filled], mask.to(self._diff.dtype))

    monkeypatch.setattr(MixedRun, "_delta", plain)
    slow = faithfulness(model, pairs, free, graph=graph).metric, faithfulness(model, pairs, spots, graph=graph).metric
    for a, b in zip(fast, slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert (fast[0] - faithfulness(model, pairs, empty_circuit(graph), graph=graph).metric).abs().amax() > 1e-2
