"""atpstar's circuit rankings (atpstar.circuits.build) on the tiny model, float64: exact position-free edge
effects against the circuit evaluator, verified re-rankings against the exact ranking, costs, bad input."""

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf

import atpstar
from atpstar.circuits import MIB_GRID, faithfulness, full_circuit, mib, mib_scores
from atpstar.circuits.prune import top_n
from atpstar.circuits.build import CircuitScores, exact, exact_effects, signed_by, verified
from atpstar.edges import EdgeGraph, atp
from atpstar.edges.eap_ig import eap_ig_inputs


def _model(arch="llama"):
    return atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_an_edges_exact_effect_is_the_full_circuit_without_that_edge(arch):
    model, pairs = _model(arch), random_pairs()
    graph = EdgeGraph.of(model)
    edges = graph.valid.nonzero()[torch.tensor([0, 7, 31, -1])]
    values, cost = exact_effects(model, pairs, edges)
    circuits = []
    for w, r in edges.tolist():
        mask = full_circuit(graph)
        mask[w, r] = False
        circuits.append(mask)
    result = faithfulness(model, pairs, circuits)
    expected = result.metric - result.clean[None]  # the circuit evaluator's run with that one edge reading noise
    assert torch.allclose(values, expected, atol=1e-10)
    assert values.abs().max() > 1e-3  # not all zero: the check has teeth
    assert 4 * len(pairs) < cost.forward <= (4 + len(edges)) * len(pairs)


def test_verifying_every_edge_is_the_exact_ranking_and_its_curves():
    model, pairs = _model(), random_pairs()
    truth = exact(model, pairs)
    estimate = atp(model, pairs)
    everything = verified(model, pairs, estimate, top=truth.graph.n_edges())
    assert torch.equal(everything.scores.isnan(), truth.scores.isnan())
    assert torch.allclose(everything.scores.nan_to_num(), truth.scores.nan_to_num(), atol=1e-12)
    a, b = mib(model, pairs, everything.scores), mib(model, pairs, truth.scores)
    assert a.signed.f == pytest.approx(b.signed.f, abs=1e-12) and a.cmd == pytest.approx(b.cmd, abs=1e-12)
    assert truth.info["verified"] == truth.graph.n_edges() == len(truth.scores.isfinite().nonzero())


def test_verified_top_takes_exact_values_above_and_keeps_the_estimate_below():
    model, pairs = _model(), random_pairs()
    graph = EdgeGraph.of(model)
    estimate = eap_ig_inputs(model, pairs, ig_steps=3)
    base, truth = mib_scores(estimate, pairs), exact(model, pairs).scores
    top = 20
    result = verified(model, pairs, estimate, top=top)
    order = torch.sort(base.abs().nan_to_num(-1.0).flatten(), descending=True, stable=True).indices
    chosen, rest = order[:top], order[top:graph.n_edges()]
    assert torch.allclose(result.scores.flatten()[chosen], truth.flatten()[chosen], atol=1e-12)
    assert torch.equal(result.scores.flatten()[rest], base.flatten()[rest])
    assert not torch.allclose(base.flatten()[chosen], truth.flatten()[chosen], atol=1e-3)  # they did change
    assert result.cost.forward == pytest.approx(estimate.info["cost"].forward + result.info["verify_cost"].forward)
    assert result.cost.backward == estimate.info["cost"].backward > 0
    assert result.info["verified"] == top and "eap-ig-inputs" in result.method


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_verified_circuits_are_closer_to_the_exact_rankings_circuits(arch):
    """Measured on the tiny models (float64, fixed seeds), AtP* with its top 20 % verified: at every MIB grid
    point, signed and absolute, its circuit shares at least as many edges with the exact ranking's circuit
    as AtP*'s circuit does, and more at some points; with the whole graph verified they are the same."""
    model, pairs = _model(arch), random_pairs()
    graph = EdgeGraph.of(model)
    estimate = atp(model, pairs)
    better = verified(model, pairs, estimate, top=graph.n_edges() // 5)
    truth = exact(model, pairs).scores
    gained = 0
    for absolute in (False, True):
        for p in MIB_GRID:
            n = int(p * graph.n_edges())
            circuit = {k: top_n(graph, s, n, absolute, pruned=False) for k, s in
                       (("estimate", mib_scores(estimate, pairs)), ("verified", better.scores), ("exact", truth))}
            shared = {k: int((circuit[k] & circuit["exact"]).sum()) for k in ("estimate", "verified")}
            assert shared["verified"] >= shared["estimate"], (absolute, p, shared)
            gained += shared["verified"] - shared["estimate"]
    assert gained >= 3


def test_circuit_scores_are_taken_as_an_estimate_to_verify():
    model, pairs = _model(), random_pairs()
    graph = EdgeGraph.of(model)
    scores = torch.zeros(graph.shape, dtype=torch.float64).masked_fill(~graph.valid, torch.nan)
    base = CircuitScores("zeros", graph, scores, atpstar.Cost(pairs=len(pairs)))
    result = verified(model, pairs, base, top=5)
    first = graph.valid.flatten().nonzero().flatten()[:5]  # ties: the first edges in (writer, reader) order
    assert torch.equal(result.scores.flatten()[first], exact(model, pairs).scores.flatten()[first])
    rest = torch.ones(graph.shape, dtype=torch.bool).flatten()
    rest[first] = False
    assert torch.equal(result.scores.flatten()[rest].nan_to_num(), torch.zeros(int(rest.sum()), dtype=torch.float64))
    assert result.method == "verified top 5 of zeros"


def test_bad_input_names_the_culprit():
    model, pairs = _model(), random_pairs()
    graph = EdgeGraph.of(model)
    estimate = atp(model, pairs, qk_fix=False, graddrop=False)
    for top in (-1, 2.5, True):
        with pytest.raises(ValueError, match="top must be a number of edges"):
            verified(model, pairs, estimate, top=top)
    missing = (~graph.valid).nonzero()[0]
    with pytest.raises(ValueError, match=f"edge {graph.writer_names[missing[0]]} -> .* does not exist"):
        exact_effects(model, pairs, missing[None])


def test_signed_by_takes_one_rankings_magnitudes_and_anothers_signs():
    model, pairs = _model(), random_pairs()
    graph = EdgeGraph.of(model)
    cost = atpstar.Cost(forward=3.0, pairs=len(pairs))
    a = torch.tensor([[2.0, -3.0], [0.5, 1.0]])
    b = torch.tensor([[-1.0, -2.0], [0.0, 4.0]])
    pad = lambda x: torch.nn.functional.pad(x, (0, graph.n_readers - 2, 0, graph.n_writers - 2))  # noqa: E731
    mixed = signed_by(CircuitScores("a", graph, pad(a), cost), CircuitScores("b", graph, pad(b), cost))
    assert torch.equal(mixed.scores[:2, :2], torch.tensor([[-2.0, -3.0], [0.0, 1.0]], dtype=torch.float64))
    assert mixed.cost.forward == 6.0 and mixed.method == "a with the signs of b"
    other = CircuitScores("c", EdgeGraph.of(_model("gemma3")), torch.zeros(3, 3), cost)
    with pytest.raises(ValueError, match="signed_by needs scores of one graph"):
        signed_by(mixed, other)


def test_mean_magnitude_with_the_second_ones_signs():
    from types import SimpleNamespace

    from atpstar.circuits.build import mean_magnitude
    from atpstar.cost import Cost

    graph, other = SimpleNamespace(shape=(2, 2)), SimpleNamespace(shape=(3, 2))  # the shape is all they compare
    a = CircuitScores("a", graph, torch.tensor([[1.0, -4.0], [2.0, float("nan")]]), Cost(forward=2.0, pairs=1))
    b = CircuitScores("b", graph, torch.tensor([[-3.0, 2.0], [0.0, float("nan")]]), Cost(forward=5.0, pairs=1))
    both = mean_magnitude(a, b)
    assert both.scores[0].tolist() == [-2.0, 3.0] and both.scores[1, 0] == 0 and both.scores[1, 1].isnan()
    assert both.cost.forward == 7.0
    with pytest.raises(ValueError, match="one graph"):
        mean_magnitude(a, CircuitScores("c", other, torch.zeros(3, 2), Cost(pairs=1)))
