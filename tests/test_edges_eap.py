"""EAP, EAP-IG-inputs and EAP-IG-activations against brute force: the derivative (float64, autograd through
the whole patched forward) of the metric along each edge, averaged along each method's path, on sampled
edges of every reader kind; and numerical integration of the path integral."""

import numpy as np
import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf

import atpstar
from atpstar.circuits import faithfulness, node_circuit
from atpstar.edges import EdgeGraph
from atpstar.edges.atp import atp
from atpstar.edges.eap_ig import _moved, eap, eap_ig_activations, eap_ig_inputs
from atpstar.edges.reader_patch import ReaderDeltas, ReaderPatch
from atpstar.edges.writes import capture_writes
from atpstar.metrics import resolve
from atpstar.substrate.capture import run

def _model(arch):
    return atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)


def _sample_edges(graph, n_pos, per_kind=3, seed=0):
    """A few existing edges into readers of every kind (q, k, v, mlp, logits), at random positions."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for kind in range(5):
        w, r = (graph.valid & (graph.reader_kind == kind)[None]).nonzero(as_tuple=True)
        pick = torch.randperm(len(w), generator=gen)[:per_kind]
        out += [(int(w[i]), int(r[i]), int(torch.randint(0, n_pos, (1,), generator=gen))) for i in pick]
    return out


def _directional(model, graph, ids, pairs, metric, delta, edges, group=None, share=0.0):
    """d/dε of the metric when reader v's input at t moves by ε·Δw_u(t), at ε = 0: one row per edge, each
    with its own ε, differentiated by autograd through the whole patched forward (not the methods' own
    reader-gradient machinery)."""
    n = len(edges)
    w, r, t = (torch.tensor(c) for c in zip(*edges))
    eps = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad(), _moved(model, graph, group, share, delta):
        deltas = ReaderDeltas(torch.arange(n), r, t, delta[w, t] * eps[:, None])
        value = metric(run(model, ids.expand(n, -1), ReaderPatch(model, graph=graph, deltas=deltas)),
                       pairs.select([0] * n))
        (grad,) = torch.autograd.grad(value.sum(), eps)
    return grad


def _brute(model, pairs, edges, plan):
    """Mean over pairs (all of one length) of the mean over the plan's runs of the directional derivatives."""
    graph, metric = EdgeGraph.of(model), resolve(None, pairs)
    total = torch.zeros(len(edges), dtype=torch.float64)
    for i in range(len(pairs)):
        one = pairs.select([i])
        clean_w, _, _ = capture_writes(model, graph, one.clean[0][None])
        noise_w, _, _ = capture_writes(model, graph, one.noise[0][None])
        delta = (noise_w - clean_w)[0]
        runs = [_directional(model, graph, one.clean[0][None], one, metric, delta, edges, g, s) for g, s in plan(graph)]
        total += torch.stack(runs).mean(0)
    return total / len(pairs)


def _at(scores, edges):
    w, r, t = (torch.tensor(c) for c in zip(*edges))
    return scores.effect[w, r, t].double()


def _inputs_plan(steps):
    return lambda graph: [(("embed", None), 1 - k / steps) for k in range(steps)]


def _activations_plan(steps):
    def plan(graph):
        groups = [("embed", None)] + [(k, l) for l in range(graph.n_layers) for k in ("attn", "mlp")]
        return [(g, 1 - k / steps) for g in groups for k in range(1, steps + 1)]

    return plan


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_eap_is_plain_edge_atp_and_the_clean_gradient(arch):
    model, pairs = _model(arch), random_pairs(lengths=(7, 7))
    edges = _sample_edges(EdgeGraph.of(model), 7)
    scores = eap(model, pairs)
    plain = atp(model, pairs, qk_fix=False, graddrop=False)
    torch.testing.assert_close(scores.effect, plain.effect, equal_nan=True)
    torch.testing.assert_close(_at(scores, edges), _brute(model, pairs, edges, lambda g: [(None, 0.0)]),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma3"])
def test_eap_ig_inputs_against_the_brute_force_derivative_along_the_input_path(arch):
    model, pairs = _model(arch), random_pairs(lengths=(7, 7))
    edges = _sample_edges(EdgeGraph.of(model), 7)
    scores = eap_ig_inputs(model, pairs, ig_steps=3)
    assert scores.info["cost"].backward == 3 * len(pairs)
    torch.testing.assert_close(_at(scores, edges), _brute(model, pairs, edges, _inputs_plan(3)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_eap_ig_activations_against_the_brute_force_derivative_along_each_group_path(arch):
    model, pairs = _model(arch), random_pairs(lengths=(7, 7))
    edges = _sample_edges(EdgeGraph.of(model), 7)
    scores = eap_ig_activations(model, pairs, ig_steps=2)
    assert scores.info["runs_per_pair"] == 2 * (1 + 2 * model.n_layers)
    torch.testing.assert_close(_at(scores, edges), _brute(model, pairs, edges, _activations_plan(2)),
                               rtol=1e-5, atol=1e-7)


def test_eap_ig_inputs_converges_to_the_path_integral():
    """The left Riemann sum of S steps is the path integral of the gradient along the input path (Simpson's rule
    on 401 brute-force derivatives) minus (g(clean) − g(noise)) / 2S, up to O(1/S²): the error falls like 1/S,
    and with that end correction it is tiny. (The tiny random model's integrand has a sharp step, so a coarse
    quadrature would not do.)"""
    model, pairs = _model("llama"), random_pairs(lengths=(7,))
    edges = _sample_edges(EdgeGraph.of(model), 7, per_kind=2)
    alphas = np.linspace(0.0, 1.0, 401)
    at = torch.stack([_brute(model, pairs, edges, lambda g, a=a: [(("embed", None), 1 - a)]) for a in alphas])
    integral = (at[0] + at[-1] + 4 * at[1:-1:2].sum(0) + 2 * at[2:-1:2].sum(0)) / (3 * 400)
    scale = integral.abs().max().item()
    errors, corrected = {}, {}
    for steps in (5, 40, 160):
        riemann = _at(eap_ig_inputs(model, pairs, ig_steps=steps), edges)
        errors[steps] = (riemann - integral).abs().max().item()
        corrected[steps] = (riemann + (at[-1] - at[0]) / (2 * steps) - integral).abs().max().item()
    assert scale > 0.1 and errors[5] > 0.1 * scale  # MIB's 5 steps are far from the integral here
    assert errors[160] < errors[40] / 3 < errors[5] / 9  # first-order convergence
    assert corrected[160] < 1e-3 * scale and corrected[40] < 5e-3 * scale


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_moved_writes_are_the_noise_writes_at_share_one(arch):
    """A group's write moved all the way is its noise write: the same run as the node circuit without it."""
    model, pairs = _model(arch), random_pairs(lengths=(7,))
    graph = EdgeGraph.of(model)
    clean_w, _, _ = capture_writes(model, graph, pairs.clean[0][None])
    noise_w, _, _ = capture_writes(model, graph, pairs.noise[0][None])
    delta = (noise_w - clean_w)[0]
    metric = resolve(None, pairs)
    for group, writers in ((("embed", None), ["embed"]), (("attn", 1), None), (("mlp", 0), ["L0.mlp"])):
        if writers is None:
            writers = [n for n in graph.writer_names if n.startswith("L1.") and not n.endswith("mlp")]
        with torch.no_grad(), _moved(model, graph, group, 1.0, delta):
            moved = metric(run(model, pairs.clean[0][None]), pairs).double()
        keep = [n for n in graph.writer_names if n not in writers]
        truth = faithfulness(model, pairs, node_circuit(graph, keep), graph=graph).metric[0]
        torch.testing.assert_close(moved, truth, rtol=1e-9, atol=1e-9)


def test_ig_steps_must_be_a_positive_integer():
    model, pairs = _model("llama"), random_pairs(lengths=(7,))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="ig_steps must be a positive integer"):
            eap_ig_inputs(model, pairs, ig_steps=bad)
