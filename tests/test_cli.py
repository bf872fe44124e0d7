"""The command line end to end on a tiny model saved as a directory: run folders, resume after Ctrl-C
(in-process and with a real SIGINT), report, tasks, demo; every flag exercised by a test and every flag
the documents use known (the documents' commands themselves run in test_docs_commands.py)."""

import importlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_docs_commands import commands
from interrupt import interrupt_after_first_save
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.run.cli import main
from atpstar.run.cli.parser import build_parser
from atpstar.run.options import parse_stop

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "noise": "When Anna and Paul went to the store, Paul gave a drink to", "answer": " Mary", "distractor": " John"},
    {"clean": "When Susan and Peter went to the park, Peter gave a book to",
     "noise": "When Laura and David went to the park, David gave a book to", "answer": " Susan", "distractor": " Peter"},
    {"clean": "When Emma and Frank went to the school, Frank gave a card to",
     "noise": "When Julia and Henry went to the school, Henry gave a card to", "answer": " Emma", "distractor": " Frank"},
]


def _run(capsys, *argv) -> tuple[str, str]:
    assert main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.fixture(scope="module")
def full_run(tiny_dir, tmp_path_factory):  # noqa: F811
    """One run with three methods (ground truth included), verification with a stop rule and the diagnostic."""
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(["run", "--model", tiny_dir, "--task", "ioi", "--pairs", "3", "--method", "atp*,atp,acp",
                 "--kinds", "attn", "--verify-budget", "30nodes", "--stop", "small-effects:window=5,relative=0.05",
                 "--diagnose", "--samples", "200", "--p", "0.1", "--delta", "0.1", "--seed", "0",
                 "--out", str(out), "--quiet"]) == 0
    return out


def test_help_of_every_command_has_examples(capsys):
    for argv in ([], ["run"], ["demo"], ["report"], ["resume"], ["tasks"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out, argv


def test_run_writes_the_whole_folder(full_run, capsys):
    names = {p.name for p in full_run.iterdir()}
    assert {"run.json", "nodes.parquet", "nodes.csv", "report.html", "stages", "checkpoints"} <= names
    meta = json.loads((full_run / "run.json").read_text())
    assert meta["status"] == "done" and meta["config"]["methods"] == ["atp*", "atp", "acp"]
    assert len(meta["model"]["weights_sha256"]) == 64 and meta["versions"]["torch"]
    assert meta["stages"]["verify"]["nodes"] <= 30 and "diagnose" in meta["stages"]
    assert meta["costs"]["total"]["per_pair"] > meta["costs"]["verify"]["per_pair"] > 0
    run = atpstar.load_run(full_run)
    assert run.finished and set(run.scores) == {"atp*", "atp", "acp"}
    assert pd.read_csv(full_run / "nodes.csv")["name"].tolist() == run.nodes["name"].tolist()


def test_quiet_is_silent_and_progress_is_shown_otherwise(tiny_dir, tmp_path, capsys):  # noqa: F811
    base = ["run", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--verify-budget", "4nodes"]
    out, err = _run(capsys, *base, "--out", tmp_path / "quiet", "--quiet")
    assert err == "" and "report:" in out
    out, err = _run(capsys, *base, "--out", tmp_path / "loud", "--top", "3")
    for stage in ("loading model", "pairs: 2 from ioi", "estimating with atp*", "verifying", "writing the node table", "report:"):
        assert stage in err, stage
    assert "verifying:" in err  # a progress bar (tqdm writes to stderr)
    assert len(re.findall(r"^\s+\d+ L\d", out, re.M)) == 3  # --top 3


def test_report_rebuilds_and_resume_of_a_finished_run(full_run, capsys):
    (full_run / "report.html").unlink()
    out, _ = _run(capsys, "report", full_run)
    assert (full_run / "report.html").is_file() and str(full_run / "report.html") in out
    out, _ = _run(capsys, "resume", full_run)
    assert "already finished" in out
    # Ctrl-C while the report was written: the run is done, its report missing; resume rebuilds it
    page = (full_run / "report.html").read_text()
    (full_run / "report.html").unlink()
    out, _ = _run(capsys, "resume", full_run)
    assert "its report was missing and is rebuilt" in out and (full_run / "report.html").read_text() == page


def test_tasks_lists_one_example_each(tiny_dir, capsys):  # noqa: F811
    out, _ = _run(capsys, "tasks", "--model", tiny_dir)
    for name in ("ioi", "city", "rand"):
        assert re.search(rf"^{name}: ", out, re.M), name
    assert out.count("  clean:  ") == 3 and out.count("  metric: ") == 3 and "distractor:" in out


def test_demo_never_overwrites(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--verify-budget", "4nodes",
            "--samples", "400", "--quiet"]
    out, _ = _run(capsys, *args)
    assert "report: atpstar-demo/report.html" in out and "diagnostic:" in out
    out, _ = _run(capsys, *args)
    assert "report: atpstar-demo-2/report.html" in out
    out, _ = _run(capsys, *args[:-3], "--no-diagnose", "--out", tmp_path / "d3", "--quiet")
    assert "diagnostic:" not in out


def test_every_method_your_own_pairs_and_machine_flags(tiny_dir, tmp_path, capsys):  # noqa: F811
    jsonl, csv = tmp_path / "pairs.jsonl", tmp_path / "pairs.csv"
    jsonl.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    pd.DataFrame(PAIRS).to_csv(csv, index=False)
    methods = "atp,atp+qkfix,atp+graddrop,subsampling,blocks,hierarchical,iterative"
    _run(capsys, "run", "--model", tiny_dir, "--task", jsonl, "--pairs", "2", "--method", methods, "--kinds", "q,k",
         "--verify-budget", "20", "--device", "auto", "--dtype", "float32", "--batch-size", "2",
         "--checkpoint-every", "0", "--out", tmp_path / "all", "--quiet")
    run = atpstar.load_run(tmp_path / "all")
    assert list(run.scores) == methods.split(",") and len(run.pairs) == 2
    assert {f"score_{m}" for m in ("atp", "atp+qkfix", "subsampling", "iterative")} <= set(run.nodes.columns)
    _run(capsys, "run", "--model", tiny_dir, "--task", csv, "--kinds", "v", "--dtype", "bfloat16", "--seed", "3",
         "--verify-budget", "60s", "--out", tmp_path / "csv", "--quiet")
    run = atpstar.load_run(tmp_path / "csv")
    assert len(run.pairs) == 3 and run.meta["model"]["dtype"] == "bfloat16" and run.meta["config"]["seed"] == 3


def test_a_stop_rule_ends_verification(tiny_dir, tmp_path, capsys):  # noqa: F811
    out, _ = _run(capsys, "run", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--stop",
                  "small-effects:window=2,threshold=100", "--out", tmp_path / "r", "--quiet")
    assert "stopped: small effects: the last 2 verified nodes" in out
    verify = atpstar.load_run(tmp_path / "r").meta["stages"]["verify"]
    assert verify["stop_index"] == 2 and verify["nodes"] >= 2  # the rest of the chunk was paid for and is kept


def test_stop_theta_verifies_until_nothing_large_is_left(tiny_dir, tmp_path, capsys):  # noqa: F811
    """--stop theta: one set of random subsets, re-bounded after every chunk; the diagnosis comes from them (no
    second diagnostic) and the report draws θ against the verified nodes."""
    _run(capsys, "run", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--stop", "theta:relative=0.9,every=1",
         "--verify-budget", "60nodes", "--samples", "200", "--p", "0.2", "--out", tmp_path / "t", "--quiet")
    run = atpstar.load_run(tmp_path / "t")
    history = run.diagnosis["theta_history"]
    assert len(history) >= 1 and len({h["cost_per_pair"] for h in history}) == 1
    assert run.diagnosis["theta"] > 0 and run.meta["stages"]["diagnose"]["done"]
    page = (tmp_path / "t" / "report.html").read_text()
    assert '<section id="theta-curve"' in page and 'alt="theta-curve"' in page
    with pytest.raises(ValueError, match="target=..., relative="):
        parse_stop("theta:window=3")
    assert parse_stop("theta").relative == 0.1 and parse_stop("theta:target=0.2").target == 0.2


def _interrupt_after(monkeypatch, module, name: str, calls: int) -> dict:
    """Make ``module.name`` raise KeyboardInterrupt (as Ctrl-C does) on its ``calls``-th call; count calls."""
    real, seen = getattr(module, name), {"n": 0, "limit": calls}

    def wrapper(*args, **kwargs):
        seen["n"] += 1
        if seen["n"] == seen["limit"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return seen


def _same_results(a: Path, b: Path) -> None:
    x, y = atpstar.load_run(a).nodes, atpstar.load_run(b).nodes
    assert x["name"].tolist() == y["name"].tolist() and x["verified"].tolist() == y["verified"].tolist()
    for col in [c for c in x.columns if c.startswith(("effect_", "score_"))]:
        np.testing.assert_allclose(x[col], y[col], atol=2e-5, rtol=1e-5, err_msg=col)


def test_ctrl_c_during_exact_patching_then_resume_loses_nothing(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    acp_module = importlib.import_module("atpstar.methods.acp")  # the module (atpstar.methods.acp is the function)

    args = ["--model", tiny_dir, "--pairs", "2", "--method", "atp*,acp", "--kinds", "head,v", "--batch-size", "4",
            "--verify-budget", "10nodes", "--checkpoint-every", "0", "--quiet"]
    _run(capsys, "run", *args, "--out", tmp_path / "fresh")
    seen = _interrupt_after(monkeypatch, acp_module, "patched_metric", -1)  # -1: never, just count
    _run(capsys, "run", *args, "--out", tmp_path / "probe")
    total = seen["n"]  # patched forward passes of an uninterrupted acp stage
    seen.update(n=0, limit=total // 2)
    assert main(["run", *args, "--out", str(tmp_path / "cut")]) == 130
    err = capsys.readouterr().err
    assert f"interrupted; finished work is saved: continue with `atpstar resume {tmp_path / 'cut'}`" in err
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "interrupted"
    seen.update(n=0, limit=-1)
    _run(capsys, "resume", tmp_path / "cut", "--quiet")
    assert 0 < seen["n"] <= total - total // 2 + 1  # only the unfinished batches were patched again
    assert atpstar.load_run(tmp_path / "cut").scores["acp"].info["resumed"] > 0
    _same_results(tmp_path / "cut", tmp_path / "fresh")


def test_ctrl_c_during_verification_then_resume_reuses_verified_nodes(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    from atpstar.substrate import node_patcher as verify_patcher

    args = ["--model", tiny_dir, "--pairs", "2", "--kinds", "attn", "--batch-size", "4", "--verify-budget", "24nodes",
            "--checkpoint-every", "0", "--quiet"]
    _run(capsys, "run", *args, "--out", tmp_path / "fresh")
    _interrupt_after(monkeypatch, verify_patcher.ChunkPatcher, "run", 3)
    assert main(["run", *args, "--out", str(tmp_path / "cut")]) == 130
    capsys.readouterr()
    monkeypatch.undo()
    _run(capsys, "resume", tmp_path / "cut")
    verify = json.loads((tmp_path / "cut" / "run.json").read_text())["stages"]["verify"]
    assert verify["reused"] == 4 and verify["patched"] == 20  # two chunks of 2 nodes were done before Ctrl-C
    _same_results(tmp_path / "cut", tmp_path / "fresh")


def test_a_real_sigint_then_resume(tiny_dir, tmp_path, capsys):  # noqa: F811
    """Ctrl-C (a real SIGINT to a real process) inside exact patching, then resume. The child holds after its
    first checkpoint save until the signal comes, so a slow or busy machine cannot let it finish first."""
    out = tmp_path / "run"
    argv = ["run", "--model", tiny_dir, "--pairs", "4", "--method", "acp", "--kinds", "all", "--batch-size", "1",
            "--checkpoint-every", "0", "--verify-budget", "0", "--out", str(out), "--quiet"]
    status, stdout, err = interrupt_after_first_save(argv, out / "checkpoints" / "acp.ckpt", "checkpoint")
    assert status == 130, (stdout, err)
    assert "Traceback" not in err and f"atpstar resume {out}" in err
    assert not (out / "stages" / "scores-acp.pt").exists()  # stopped inside exact patching, not after it
    _run(capsys, "resume", out, "--batch-size", "256", "--quiet")  # a new batch size: memory only, same results
    run = atpstar.load_run(out)
    assert run.finished and run.scores["acp"].info["resumed"] > 0 and run.meta["config"]["batch_size"] == 256
    fresh = atpstar.acp(atpstar.load_model(tiny_dir), run.pairs, kinds="all", progress=False)
    for kind in fresh.kinds:
        np.testing.assert_allclose(run.scores["acp"].effect[kind], fresh.effect[kind], atol=2e-5, rtol=1e-5)


def test_edge_flags_are_checked_before_anything_runs(tmp_path, capsys):
    assert main(["run", "--level", "edges", "--method", "acp", "--out", str(tmp_path / "x")]) == 2
    assert "must be one of atp*" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["export", str(tmp_path / "none"), "--circuit", "top:3"]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_every_flag_is_exercised_by_a_test():
    """Every ``--flag`` of every subcommand appears in a test file, and every flag the documents use exists."""
    parser = build_parser()
    source = "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "tests").glob("test_*.py")))
    sub = next(a for a in parser._actions if a.dest == "command")
    known = set()
    for name, command in sub.choices.items():
        for action in command._actions:
            for flag in action.option_strings:
                known.add(flag)
                if flag.startswith("--") and flag != "--help":
                    assert f'"{flag}"' in source, f"atpstar {name} {flag} is not exercised by a test"
    documented = {f for _, c in commands() if c.startswith("atpstar ") for f in re.findall(r"(?<=\s)--[a-z-]+", c)}
    assert documented and documented <= known, documented - known


@pytest.mark.slow
def test_smollm_run_report_and_resume(smollm, tmp_path, capsys):
    """The real model through the command line: its tokens in the node table and the report; resume after the
    verification checkpoint alone survived (as after a crash during the diagnostic)."""
    out = tmp_path / "run"
    _run(capsys, "run", "--task", "ioi", "--pairs", "1", "--kinds", "head", "--verify-budget", "5nodes", "--out", out,
         "--quiet")
    run = atpstar.load_run(out)
    prompt = run.meta["stages"]["pairs"]["texts"][0][0]
    assert "".join(run.meta["stages"]["pairs"]["tokens"]).strip().endswith(prompt.split()[-1])
    assert set(run.nodes["token"].head(20)) <= set(run.meta["stages"]["pairs"]["tokens"])
    assert run.nodes["verified"].sum() == 5 and run.nodes["effect_exact"].abs().max() > 0.1
    page = (out / "report.html").read_text()
    assert all(f"<td class=\"t\">{name}</td>" in page for name in run.nodes["name"].head(5))
    (out / "stages" / "verified.parquet").unlink()
    meta = json.loads((out / "run.json").read_text())
    meta["status"] = "running"
    (out / "run.json").write_text(json.dumps(meta))
    _run(capsys, "resume", out, "--quiet")
    again = json.loads((out / "run.json").read_text())["stages"]["verify"]
    assert again["reused"] == 5 and again["patched"] == 0


def test_edge_universe_is_checked_before_anything_runs(tmp_path, capsys):
    """--edge-universe (tested in full in test_edges_universe.py) is read before the model loads."""
    code = main(["run", "--level", "edges", "--diagnose", "--verify-budget", "4edges", "--edge-universe", "top:x",
                 "--out", str(tmp_path / "x")])
    assert code == 2 and "cannot read --edge-universe 'top:x'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
