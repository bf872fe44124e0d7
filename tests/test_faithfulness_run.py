"""``atpstar run --level edges|both --faithfulness``: the faithfulness stage scores the run's edge ranking (its
first method's estimates, the exact effect wherever an edge was verified, in MIB's sign convention) with
atpstar.circuits, writes stages/faithfulness.json and faithfulness.csv, is skipped on resume, and gets its
report section; a run that ranks no edges is refused before the model loads. Everything runs for real on
the tiny model (edge AtP*, exact edge verification, the circuits' forward passes)."""

import json
import re
import shutil
import warnings

import pandas as pd
import pytest
import torch
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
import atpstar.circuits
from atpstar.circuits import FaithfulnessUndefined, mib, mib_scores, smallest
from atpstar.edges.edgeset import EdgeSet
from atpstar.run.cli import main
from atpstar.run.pipeline import RunConfig, resume, run

VERIFIED = 6


@pytest.fixture(scope="module")
def out(tiny_dir, tmp_path_factory):  # noqa: F811
    path = tmp_path_factory.mktemp("faith") / "run"
    run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget=f"{VERIFIED}edges", faithfulness=True), path,
        progress=False)
    return path


def by_hand(folder) -> torch.Tensor:
    """The run's ranking in MIB's convention, written out: the edge estimates with each verified edge's exact
    effect at its position, each aligned position weighted by the share of pairs that have it, summed, negated."""
    scores, pairs = folder.edge_scores, folder.pairs
    values = scores.effect.double().clone()
    verified = folder.verified_edges
    edges = EdgeSet.from_names(scores.graph, verified["name"])
    values[edges.writer, edges.reader, edges.pos] = torch.tensor(verified["effect_exact"].to_numpy(), dtype=torch.float64)
    weight = pairs.presence(torch.arange(values.shape[-1]))
    return (-(values.nan_to_num() * weight).sum(-1)).masked_fill(~scores.graph.valid, torch.nan)


def test_the_stage_writes_the_library_scores_of_the_runs_ranking(out, tiny_dir):  # noqa: F811
    folder = atpstar.load_run(out)
    card = folder.faithfulness
    assert card == json.loads((out / "stages" / "faithfulness.json").read_text())
    assert card["method"] == "atp*" and card["verified"] == VERIFIED == len(folder.verified_edges)
    assert "exact effects of its 6 verified edges" in card["ranking"] and "MIB's sign convention" in card["ranking"]
    ranking = by_hand(folder)
    assert torch.allclose(mib_scores(folder.edge_scores, folder.pairs, verified=folder.verified_edges), ranking,
                          equal_nan=True, rtol=1e-12, atol=0)
    assert not torch.allclose(mib_scores(folder.edge_scores, folder.pairs), ranking, equal_nan=True)  # exact ≠ estimate
    model = atpstar.load_model(tiny_dir)
    board = mib(model, folder.pairs, ranking)
    assert card["mib"]["cpr"] == pytest.approx(board.cpr, abs=1e-9) and card["mib"]["cmd"] == pytest.approx(board.cmd, abs=1e-9)
    assert card["mib"]["signed"]["f"] == pytest.approx(board.signed.f, abs=1e-9)
    assert card["mib"]["absolute"]["kept"] == board.absolute.kept
    assert card["m_full"] == pytest.approx(float(board.signed.result.clean.mean()), abs=1e-9)
    found = smallest(model, folder.pairs, ranking, (0.8, 0.9), grid_curve=board.absolute)
    assert [(s["threshold"], s["n"], s["kept"]) for s in card["smallest"]] == [(s.threshold, s.n, s.kept) for s in found]
    assert card["circuits"] == 20 + sum(s.evaluations for s in found)
    # the table in the run folder is the same two curves, one row per grid point
    table = pd.read_csv(out / "faithfulness.csv")
    assert table.columns.tolist() == ["percent_edges", "edges", "edges_signed", "f_signed", "edges_absolute", "f_absolute"]
    assert table["edges"].tolist() == board.signed.requested and table["edges_signed"].tolist() == board.signed.kept
    assert table["f_absolute"].tolist() == pytest.approx(board.absolute.f, abs=1e-5)
    # run.json: the scores, and the stage's cost kept out of the method's total (it is an evaluation)
    stage = folder.meta["stages"]["faithfulness"]
    assert stage["cpr"] == card["mib"]["cpr"] and stage["circuits"] == card["circuits"]
    assert "faithfulness" not in folder.meta["costs"]


def test_the_report_shows_the_curves_the_table_and_says_what_they_mean(out):
    card = atpstar.load_run(out).faithfulness
    page = (out / "report.html").read_text()
    section = re.search(r'<section id="faithfulness">(.*?)</section>', page, re.S).group(1)
    assert section.count("data:image/png;base64,") == 1
    assert f"CPR = <b>{card['mib']['cpr']:.4f}</b>, CMD = <b>{card['mib']['cmd']:.4f}</b>" in section
    for words in ("<b>f</b>(C) = (m(C) − m(∅)) / (m(full) − m(∅))", "<b>CPR</b> (higher is better)",
                  "<b>CMD</b> (lower is better)", "the atp* edge ranking, with the exact effects of its 6 verified edges",
                  "smallest circuit with f ≥ 0.8"):
        assert words.replace("'", "&#x27;") in section, words
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", re.search(r'<table id="faithfulness-table".*?</table>',
                                                                          section, re.S).group(0))
    assert [int(n) for _, n in rows] == card["mib"]["signed"]["requested"]


def test_resume_skips_the_finished_stage_and_redoes_a_missing_one(out, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = (copy / "stages" / "faithfulness.json").read_text()
    meta = json.loads((copy / "run.json").read_text())
    meta["status"] = "interrupted"
    (copy / "run.json").write_text(json.dumps(meta))
    (copy / "report.html").unlink()
    monkeypatch.setattr(atpstar.circuits, "scorecard", lambda *a, **k: pytest.fail("the finished stage was redone"))
    again = resume(copy, progress=False)
    assert (copy / "stages" / "faithfulness.json").read_text() == before and again.meta["status"] == "done"
    assert '<section id="faithfulness">' in (copy / "report.html").read_text()
    monkeypatch.undo()
    (copy / "stages" / "faithfulness.json").unlink()  # interrupted during the stage: it runs again, same numbers
    meta["status"] = "interrupted"
    (copy / "run.json").write_text(json.dumps(meta))
    again = resume(copy, progress=False)
    first, second = json.loads(before)["mib"], again.faithfulness["mib"]
    assert [second[k] for k in ("cpr", "cmd")] == pytest.approx([first[k] for k in ("cpr", "cmd")], abs=1e-9)
    assert second["absolute"]["f"] == pytest.approx(first["absolute"]["f"], abs=1e-9)


def test_undefined_faithfulness_is_said_not_a_failed_run(out, tmp_path, monkeypatch):
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "stages" / "faithfulness.json").unlink()
    meta = json.loads((copy / "run.json").read_text())
    meta["status"] = "interrupted"
    (copy / "run.json").write_text(json.dumps(meta))

    def undefined(*args, **kwargs):
        raise FaithfulnessUndefined("faithfulness is undefined: metric 'logit_diff' averages 0 on both runs")

    monkeypatch.setattr(atpstar.circuits, "scorecard", undefined)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = resume(copy, progress=False)
    assert any("--faithfulness: faithfulness is undefined" in str(w.message) for w in caught)
    assert again.meta["status"] == "done" and "undefined" in again.faithfulness
    assert "Faithfulness is undefined for this run" in (copy / "report.html").read_text()


def test_both_levels_on_the_command_line(tiny_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "both"
    assert main(["run", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--level", "both", "--verify-budget",
                 "3nodes", "--faithfulness", "--out", str(out), "--quiet", "--top", "2"]) == 0
    folder = atpstar.load_run(out)
    assert folder.faithfulness["verified"] == 3 and (out / "faithfulness.csv").is_file()
    assert f"CPR {folder.faithfulness['mib']['cpr']:.4f}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--faithfulness"], "add --level edges (or --level both)"),
    (["--faithfulness", "--level", "nodes", "--kinds", "head"], "this run ranks nodes only"),
])
def test_faithfulness_without_edges_is_refused_before_the_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    import atpstar.substrate.model as model_module

    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["run", "--out", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_the_option_is_checked_in_python_too():
    with pytest.raises(ValueError, match="add --level edges"):
        RunConfig(faithfulness=True).plan()
    with pytest.raises(ValueError, match="faithfulness must be True or False"):
        RunConfig(level="edges", faithfulness="yes").plan()
    assert RunConfig(level="both", faithfulness=True).plan().faithfulness
    assert not RunConfig.from_dict({"level": "edges"}).plan().faithfulness  # run.json from before --faithfulness
