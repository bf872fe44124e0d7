"""End to end: tasks and user files through acp and atp, distribution aggregates, the CLI."""

import json

import pytest
import torch
from conftest import random_pairs

import atpstar
from atpstar.run.cli import main
from atpstar.types import ALL_KINDS


def test_aggregates_are_means_over_pairs(model):
    pairs = random_pairs(lengths=(7, 7, 7), seed=11)
    for scores in (atpstar.acp(model, pairs, kinds="all", per_pair=True, progress=False),
                   atpstar.atp(model, pairs, kinds="all", per_pair=True, progress=False)):
        for kind in ALL_KINDS:
            per = scores.per_pair[kind].double()
            assert torch.allclose(scores.effect[kind].double(), per.mean(0), atol=1e-6)  # atp: float32 results
            assert torch.allclose(scores.mean_abs[kind].double(), per.abs().mean(0), atol=1e-6)
            assert (scores.mean_abs[kind] >= scores.effect[kind].abs() - 1e-9).all()
        if scores.method == "acp":
            assert torch.equal(scores.score[ALL_KINDS[0]], scores.effect[ALL_KINDS[0]].abs())


@pytest.mark.slow
def test_tasks_run_through_both_methods(smollm, tmp_path):
    for name, builder in atpstar.tasks.TASKS.items():
        pairs = builder(smollm, n=2, seed=0)
        est = atpstar.atp(smollm, pairs, kinds="head", progress=False)
        top = est.to_frame().head(5)
        exact = atpstar.acp(smollm, pairs, nodes=top, progress=False).to_frame()
        assert len(exact) == 5, name
        assert exact["score"].max() > 0, name
    path = tmp_path / "pairs.jsonl"
    rows = [{"clean": "When Mary and John went to the store, John gave a drink to",
             "noise": "When Alice and Bob went to the store, Bob gave a drink to",
             "answer": " Mary", "distractor": " John"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = atpstar.PromptPairs.from_jsonl(path, smollm)
    assert len(pairs) == 1
    scores = atpstar.atp(smollm, pairs, kinds=["q", "k"], progress=False)
    assert scores.to_frame()["score"].max() > 0.1


@pytest.mark.slow
def test_cli_run_and_errors(smollm, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--task", "ioi", "--pairs", "2", "--kinds", "head", "--quiet", "--top", "3",
                 "--verify-budget", "5nodes", "--out", str(out)]) == 0
    import pandas as pd

    frame = pd.read_csv(out / "nodes.csv")
    assert len(frame) == 30 * 9 * frame["pos"].nunique() and frame["verified"].sum() == 5
    assert main(["run", "--task", str(tmp_path / "missing.jsonl"), "--quiet", "--out", str(tmp_path / "r2")]) == 2
    assert "error" in capsys.readouterr().err
