"""Circuit IG against brute force, on the tiny model of every architecture (float64):

- its gradient at a point of the path equals central finite differences of the faithfulness evaluator's own
  mixed run (:class:`MixedRun`, fractional membership) for sampled edges of every reader kind;
- its effects add up, per pair, to m(∅) − m(full) as the steps grow, and the midpoint rule's error shrinks;
- position-free and per-position memberships give the same gradients (per-position summed)."""

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf

import atpstar
from atpstar.circuits import empty_circuit, faithfulness, full_circuit
from atpstar.circuits.circuit_ig import circuit_ig
from atpstar.circuits.mixture import GradMixedRun, MixedRun
from atpstar.edges import EdgeGraph
from atpstar.edges.writes import capture_writes
from atpstar.metrics import resolve
from atpstar.substrate.capture import run


def _model(arch):
    return atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)


def _metric_at(model, graph, pairs, outside, grad=False):
    """(metric summed over the pairs, outside) of the mixed run with membership shares ``outside`` (P, W, R[, T])."""
    (group,) = pairs.groups()  # pairs of one length
    metric = resolve(None, pairs)
    noise_w = capture_writes(model, graph, group.noise)[0]
    kind = GradMixedRun if grad else MixedRun
    value = metric(run(model, group.clean, kind(model, graph=graph, noise=noise_w, outside=outside)), group.pairs)
    return value.sum()


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma3"])
def test_gradient_matches_finite_differences_of_the_evaluator(arch):
    model, pairs = _model(arch), random_pairs((8, 8), seed=3)
    graph = EdgeGraph.of(model)
    gen = torch.Generator().manual_seed(0)
    base = (torch.rand((len(pairs), *graph.shape), generator=gen, dtype=torch.float64) * graph.valid).requires_grad_()
    (grad,) = torch.autograd.grad(_metric_at(model, graph, pairs, base, grad=True), base)
    picks = []
    for kind in range(5):  # q, k, v, mlp, logits readers
        w, r = (graph.valid & (graph.reader_kind == kind)[None]).nonzero(as_tuple=True)
        picks += [(int(w[i]), int(r[i])) for i in torch.randperm(len(w), generator=gen)[:2]]
    assert len(picks) >= 8
    # the attention's softmax (and Llama's and Gemma's RMSNorm) compute in float32 even in a float64 model: a step
    # wide enough for float32 rounding, and a tolerance for the step's own O(eps²) error
    eps, tol = 3e-3, dict(rel=5e-3, abs=5e-4)
    for w, r in picks:
        moved = []
        for sign in (1, -1):
            outside = base.detach().clone()
            outside[:, w, r] += sign * eps
            with torch.no_grad():
                moved.append(float(_metric_at(model, graph, pairs, outside)))
        numeric = (moved[0] - moved[1]) / (2 * eps)
        analytic = float(grad[:, w, r].sum())
        assert analytic == pytest.approx(numeric, **tol), (graph.writer_names[w], graph.reader_names[r])
    assert float(grad.abs().sum()) > 0


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_per_position_gradients_from_reader_inputs_equal_autograd(arch):
    """GradMixedRun.edge_gradients (position-free shares, per-position gradients from each reader's input) equals
    autograd through per-position shares, and sums over positions to the position-free gradient."""
    model, pairs = _model(arch), random_pairs((8, 8), seed=3)
    graph = EdgeGraph.of(model)
    (group,) = pairs.groups()
    noise_w = capture_writes(model, graph, group.noise)[0]
    metric = resolve(None, pairs)
    share = torch.full((len(pairs), *graph.shape), 0.3, dtype=torch.float64) * graph.valid
    per = share[..., None].expand(-1, -1, -1, 8).clone().requires_grad_()
    (g_per,) = torch.autograd.grad(_metric_at(model, graph, pairs, per, grad=True), per)
    free = share.clone().requires_grad_()
    (g_free,) = torch.autograd.grad(_metric_at(model, graph, pairs, free, grad=True), free)
    hooks = GradMixedRun(model, grad=True, graph=graph, noise=noise_w, outside=share)
    mine = hooks.edge_gradients(metric(run(model, group.clean, hooks), group.pairs).sum())
    valid = graph.valid[None, ..., None]
    torch.testing.assert_close(mine, (g_per * valid).double(), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(g_per.sum(-1), g_free, rtol=1e-9, atol=1e-10)
    assert float(mine.abs().sum()) > 0


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_effects_add_up_to_the_behaviour(arch):
    model, pairs = _model(arch), random_pairs((7, 9), seed=1)
    graph = EdgeGraph.of(model)
    ends = faithfulness(model, pairs, [empty_circuit(graph), full_circuit(graph)])
    target = ends.metric[0] - ends.metric[1]  # (P,) m(∅) − m(full) per pair
    errors = []
    for steps in (8, 64):
        scores = circuit_ig(model, pairs, ig_steps=steps, per_pair=True)
        total = scores.per_pair.double().nan_to_num().sum(dim=(1, 2, 3))
        errors.append(float((total - target).abs().max()))
        assert scores.effect.shape == (*graph.shape, pairs.max_len)
        assert scores.info["cost"].forward == len(pairs) * (1 + steps)
    assert errors[1] < 2e-3 * float(target.abs().max())
    assert errors[1] < errors[0] / 4  # the midpoint rule's error falls ~1/S²


def test_mean_effect_is_the_mean_of_the_pairs_present_and_batches_agree():
    model, pairs = _model("gpt2"), random_pairs((7, 9, 9), seed=2)
    one = circuit_ig(model, pairs, ig_steps=3, per_pair=True, batch_size=1)
    many = circuit_ig(model, pairs, ig_steps=3, per_pair=True, batch_size=8)
    torch.testing.assert_close(one.effect, many.effect, rtol=1e-9, atol=1e-12, equal_nan=True)
    torch.testing.assert_close(one.effect, one.per_pair.double().nanmean(0).to(one.effect.dtype), rtol=1e-5,
                               atol=1e-7, equal_nan=True)
    assert torch.isnan(one.effect[~one.graph.valid]).all()


@pytest.mark.parametrize("steps", [0, -2, 2.5, True])
def test_bad_steps_are_refused(steps):
    model, pairs = _model("llama"), random_pairs((7,), seed=1)
    with pytest.raises(ValueError, match="ig_steps"):
        circuit_ig(model, pairs, ig_steps=steps)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gemma3"])
def test_one_share_for_every_edge_equals_the_same_shares_edge_by_edge(arch):
    """share= (running sums where a hook's readers read every writer before them) gives the gradients of outside=
    share × every existing edge (GPT-NeoX's parallel blocks: the MLP does not read its own layer's attention)."""
    model, pairs = _model(arch), random_pairs((8, 8), seed=3)
    graph = EdgeGraph.of(model)
    (group,) = pairs.groups()
    noise_w = capture_writes(model, graph, group.noise)[0]
    metric = resolve(None, pairs)
    got = []
    for kwargs in ({"share": 0.35}, {"outside": (graph.valid * 0.35).double().expand(len(pairs), -1, -1)}):
        hooks = GradMixedRun(model, grad=True, graph=graph, noise=noise_w, **kwargs)
        got.append(hooks.edge_gradients(metric(run(model, group.clean, hooks), group.pairs).sum()))
    scale = float(got[1].abs().max())
    assert scale > 1e-2
    # to float32 rounding (the softmax and RMSNorm compute in float32 even in a float64 model)
    torch.testing.assert_close(got[0], got[1], rtol=1e-5, atol=1e-5 * scale)
    with pytest.raises(ValueError, match="either outside"):
        GradMixedRun(model, graph=graph, noise=noise_w)
