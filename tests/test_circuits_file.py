"""Circuits found elsewhere: an EAP-IG / MIB graph JSON read as a circuit and a ranking of this model, scored by the
same evaluator, and `atpstar evaluate`; each bad file a clear error."""

import json

import pytest
import torch
from conftest import StubTokenizer, random_pairs, tiny_hf
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.circuits import faithfulness, mib
from atpstar.circuits.evaluate_file import evaluate_file
from atpstar.circuits.graph_json import read_graph_json
from atpstar.edges import EdgeGraph
from atpstar.edges.export import eap_config, eap_edge_names
from atpstar.run.cli import main


def _model(arch="llama"):
    return atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)


def _graph_json(model, in_graph=(), seed=0):
    """EAP-IG's graph of ``model`` with random scores; ``in_graph``: EAP-IG edge names in the circuit."""
    cfg = eap_config(model)
    names = eap_edge_names(cfg)
    scores = torch.randn(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return {"cfg": cfg, "nodes": {}, "edges": {n: {"score": s, "in_graph": n in set(in_graph)} for n, s in zip(names, scores)}}


def test_an_eap_ig_graph_is_the_circuit_and_ranking_of_this_model_with_key_value_inputs_folded_per_group():
    model = _model()  # 6 query heads, 2 key-value heads: query heads 0-2 share group 0
    data = _graph_json(model, ["input->a0.h1<k>", "a0.h1->m1", "m1->logits"])
    file = read_graph_json(data, model)
    graph = EdgeGraph.of(model)
    truth = torch.zeros(graph.shape, dtype=torch.bool)
    truth[graph.writer_index(["embed", "L0.head.H1", "L1.mlp"]), graph.reader_index(["L0.k.G0", "L1.mlp", "logits"])] = True
    assert torch.equal(file.circuit, truth)
    group = sum(data["edges"][f"input->a0.h{h}<k>"]["score"] for h in range(3))
    assert file.scores[0, graph.reader_names.index("L0.k.G0")].item() == pytest.approx(group)
    assert file.scores[0, graph.reader_names.index("L0.q.H4")].item() == pytest.approx(data["edges"]["input->a0.h4<q>"]["score"])
    assert int(graph.valid.sum()) == int(file.scores.isfinite().sum())


def test_evaluate_file_scores_the_circuit_and_mib_curves_with_the_same_evaluator():
    model, pairs = _model(), random_pairs(lengths=(7, 7))
    data = _graph_json(model, ["input->a0.h1<k>", "a0.h1->m1", "m1->logits", "input->logits"])
    out = evaluate_file(model, pairs, data, curve=True)
    file = read_graph_json(data, model)
    assert out["circuit"]["f"] == pytest.approx(faithfulness(model, pairs, file.circuit).f.item(), abs=1e-12)
    assert out["mib"]["cpr"] == pytest.approx(mib(model, pairs, file.scores).cpr, abs=1e-12)
    assert [s["threshold"] for s in out["smallest"]] == [0.8, 0.9]


def test_bad_graph_files_are_refused_naming_the_culprit(tmp_path):
    model, pairs = _model(), random_pairs(lengths=(7,))
    other = _graph_json(_model("gpt2"), ["input->logits"])  # 4 heads, not 6
    with pytest.raises(ValueError, match="graph of a model with 3 layers and 4 heads.*has 3 layers and 6 heads"):
        evaluate_file(model, pairs, other)
    empty = _graph_json(model)
    with pytest.raises(ValueError, match="no edge with in_graph true.*--curve"):
        evaluate_file(model, pairs, empty)
    stray = _graph_json(model, ["input->logits"])
    stray["edges"]["m2->a0.h0<q>"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(ValueError, match="edge 'L2.mlp -> L0.q.H0' does not exist"):
        evaluate_file(model, pairs, stray)
    path = tmp_path / "bad.json"
    path.write_text('{"edges": {}}')
    with pytest.raises(ValueError, match="not an EAP-IG / MIB graph JSON: no cfg entry"):
        evaluate_file(model, pairs, path)
    with pytest.raises(FileNotFoundError, match="no circuit file"):
        evaluate_file(model, pairs, tmp_path / "missing.json")


def test_atpstar_evaluate_prints_and_writes_the_faithfulness(tiny_dir, tmp_path, capsys):  # noqa: F811
    model = atpstar.load_model(tiny_dir)
    path = tmp_path / "graph.json"
    path.write_text(json.dumps(_graph_json(model, ["input->a0.h0<q>", "a0.h0->logits", "input->logits"])))
    assert main(["evaluate", str(path), "--model", tiny_dir, "--task", "ioi", "--pairs", "3", "--curve",
                 "--json", str(tmp_path / "out.json")]) == 0
    text = capsys.readouterr().out
    written = json.loads((tmp_path / "out.json").read_text())
    assert f"faithfulness f = {written['circuit']['f']:.4f}" in text and "CPR" in text and "CMD" in text
    assert len(written["mib"]["signed"]["f"]) == 10
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(_graph_json(_model("gpt2"), ["input->logits"])))
    assert main(["evaluate", str(wrong), "--model", tiny_dir, "--task", "ioi", "--pairs", "3"]) == 2
    assert "heads" in capsys.readouterr().err
