"""MIB's pruning, top-n circuits, curves, CPR / CMD and the smallest faithful circuit, on hand-made graphs,
hand-computed areas and the tiny model; and each bad input of circuit evaluation as a clear error."""

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf

import atpstar
from atpstar.circuits import FaithfulnessUndefined, empty_circuit, faithfulness, full_circuit
from atpstar.circuits.curve import MIB_GRID, areas, curves, mib, mib_scores
from atpstar.circuits.prune import prune, top_n
from atpstar.circuits.smallest import smallest
from atpstar.edges import EdgeGraph
from atpstar.edges.eap_ig import eap


def _model(arch="llama"):
    return atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)


def _mask(graph, *edges):
    mask = torch.zeros(graph.shape, dtype=torch.bool)
    for w, r in edges:
        mask[graph.writer_names.index(w), graph.reader_names.index(r)] = True
    return mask


def _edges(graph, mask):
    w, r = mask.nonzero(as_tuple=True)
    return {(graph.writer_names[i], graph.reader_names[j]) for i, j in zip(w.tolist(), r.tolist())}


def test_pruning_keeps_exactly_the_edges_on_a_path_from_the_input_to_the_logits():
    graph = EdgeGraph.of(_model())  # 6 query heads, 2 key-value groups: heads 0-2 read group 0
    path = [("embed", "L0.k.G0"), ("L0.head.H2", "L1.mlp"), ("L1.mlp", "logits")]
    dangling = [("embed", "L0.mlp"),  # L0.mlp writes nowhere
                ("L0.head.H3", "logits"),  # head 3 reads group 1, which nothing feeds
                ("L1.head.H0", "L2.q.H0")]  # nothing feeds L1.head.H0
    kept = prune(graph, _mask(graph, *path, *dangling))
    assert _edges(graph, kept) == set(path)
    assert _edges(graph, prune(graph, _mask(graph, *dangling))) == set()
    assert torch.equal(prune(graph, full_circuit(graph)), full_circuit(graph))


def test_top_n_ranks_signed_or_absolute_scores_among_existing_edges():
    graph = EdgeGraph.of(_model())
    scores = torch.zeros(graph.shape, dtype=torch.float64)
    scores[0, graph.reader_names.index("logits")] = 3.0  # embed -> logits
    scores[graph.writer_names.index("L2.mlp"), graph.reader_names.index("logits")] = -5.0
    scores[graph.writer_names.index("L2.mlp"), 0] = 9.0  # does not exist: never chosen
    signed, absolute = top_n(graph, scores, 1, False), top_n(graph, scores, 1, True)
    assert _edges(graph, signed) == {("embed", "logits")}
    assert _edges(graph, absolute) == set()  # L2.mlp -> logits has no input: pruned
    assert _edges(graph, top_n(graph, scores, 1, True, pruned=False)) == {("L2.mlp", "logits")}


def test_areas_are_trapezoids_over_the_grid_fractions_on_a_linear_axis():
    f = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1.0, 1.0]
    under = sum((b - a) * (x + y) / 2 for a, b, x, y in zip(MIB_GRID, MIB_GRID[1:], f, f[1:]))
    assert areas(MIB_GRID, f) == pytest.approx((under, 0.999 - under))
    assert areas(MIB_GRID, [1.0] * 10) == pytest.approx((0.999, 0.0))
    with pytest.raises(ValueError, match="one faithfulness per grid point"):
        areas(MIB_GRID, f[:3])


def test_mib_curves_cpr_cmd_and_the_smallest_faithful_circuit_on_the_tiny_model():
    model, pairs = _model(), random_pairs(lengths=(7, 7, 7))
    scores = eap(model, pairs)
    graph = scores.graph
    values = mib_scores(scores, pairs)
    torch.testing.assert_close(values[graph.valid], -scores.effect.double().nansum(-1)[graph.valid])
    result = mib(model, pairs, scores)
    signed, absolute = result.signed, result.absolute
    n_edges = graph.n_edges()
    assert signed.requested == [int(p * n_edges) for p in MIB_GRID] and signed.kept[-1] == n_edges
    assert signed.f[-1] == pytest.approx(1.0) and absolute.f[-1] == pytest.approx(1.0)
    for c in (signed, absolute):  # each point is the faithfulness of its pruned top-n circuit
        for n, k, f in list(zip(c.requested, c.kept, c.f))[3:6]:
            circuit = top_n(graph, values, n, c.absolute)
            assert int(circuit.sum()) == k
            assert faithfulness(model, pairs, circuit, graph=graph).f.item() == pytest.approx(f, abs=1e-9)
    assert result.cpr == pytest.approx(areas(MIB_GRID, signed.f)[0])
    assert result.cmd == pytest.approx(areas(MIB_GRID, absolute.f)[1])
    found = smallest(model, pairs, scores, thresholds=(0.8,), grid_curve=absolute)[0]
    assert found.f >= 0.8
    below = faithfulness(model, pairs, top_n(graph, values, found.n - 1, True), graph=graph).f.item()
    assert below < 0.8  # the search ends where n − 1 does not reach the threshold


# --------------------------------------------------------------------------------------------- bad input

def test_a_circuit_naming_edges_the_model_does_not_have_is_refused():
    model, pairs = _model(), random_pairs(lengths=(7,))
    with pytest.raises(ValueError, match="unknown writer 'L7.mlp'.*3 layers"):
        faithfulness(model, pairs, [["L7.mlp -> logits"]])
    with pytest.raises(ValueError, match="L2.mlp -> L0.q.H0"):
        faithfulness(model, pairs, [["L2.mlp -> L0.q.H0"]])
    graph = EdgeGraph.of(model)
    bad = empty_circuit(graph)
    bad[graph.writer_names.index("L2.mlp"), 0] = True
    with pytest.raises(ValueError, match="circuit 0 holds 1 edges the model does not have.*L2.mlp -> L0.q.H0"):
        faithfulness(model, pairs, bad)


def test_an_empty_list_of_circuits_or_of_edge_names_is_refused():
    model, pairs = _model(), random_pairs(lengths=(7,))
    with pytest.raises(ValueError, match="no circuits given"):
        faithfulness(model, pairs, [])
    with pytest.raises(ValueError, match="empty list of edge names.*empty_circuit"):
        faithfulness(model, pairs, [[]])


def test_a_circuit_of_another_model_is_refused():
    model, pairs = _model(), random_pairs(lengths=(7,))
    other = full_circuit(EdgeGraph.of(_model("gpt2")))
    with pytest.raises(ValueError, match="does not fit this model's edge graph"):
        faithfulness(model, pairs, other)
    with pytest.raises(ValueError, match="do not fit this model's edge graph"):
        curves(model, pairs, torch.zeros(other.shape))


def test_faithfulness_of_a_metric_that_cannot_tell_clean_from_noise_is_undefined():
    model = _model()
    same = random_pairs(lengths=(7,))
    same = atpstar.PromptPairs.from_ids(same.clean, same.clean, [3], [5])
    result = faithfulness(model, same, full_circuit(EdgeGraph.of(model)))
    with pytest.raises(FaithfulnessUndefined, match="undefined.*clean .full circuit. and the noise .empty circuit"):
        result.f
    assert torch.isnan(result.per_pair()).all()
