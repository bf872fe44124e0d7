"""The run folder: the node table holds exactly each method's Scores and the verified exact effects,
and everything loads back (``atpstar.load_run``) equal to what was computed."""

import numpy as np
import pandas as pd
import torch
from conftest import random_pairs, tiny_model
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.run.pipeline import RunConfig, run
from atpstar.run.folder import display_tokens, load_pairs, load_scores, node_table, save_pairs, save_scores


def _value(scores, row, column="effect"):
    return float(getattr(scores, column)[atpstar.NodeKind(row.kind)][row.layer, row.unit, row.pos])


def test_node_table_holds_every_method_and_the_verified_effects():
    model, pairs = tiny_model("llama"), random_pairs(lengths=(6, 8))
    est = atpstar.atp(model, pairs, kinds="all", progress=False)
    plain = atpstar.atp(model, pairs, kinds="all", qk_fix=False, graddrop=False, progress=False)
    v = atpstar.verify(model, pairs, est, budget=atpstar.Budget(nodes=25), progress=False)
    tokens, index = display_tokens(model, pairs)
    assert index == 1 and len(tokens) == 8  # the longest prompt covers every (right-aligned) position
    frame = node_table({"atp*": est, "atp": plain}, "atp*", v.to_frame(), tokens)
    assert len(frame) == sum(int(s.isfinite().sum()) for s in est.score.values())
    assert frame["rank"].tolist() == list(range(1, len(frame) + 1))
    assert frame["score_atpstar"].is_monotonic_decreasing
    assert frame["name"].head(25).tolist() == v.to_frame()["name"].tolist()  # verify follows the same ranking
    sample = frame.sample(60, random_state=0)
    for row in sample.itertuples():
        assert row.effect_atpstar == _value(est, row) and row.score_atpstar == _value(est, row, "score")
        assert row.effect_atp == _value(plain, row) and row.score_atp == _value(plain, row, "score")
        assert row.token == tokens[row.pos]
    exact = atpstar.acp(model, pairs, nodes=frame.head(25), progress=False)
    assert frame["verified"].tolist() == [True] * 25 + [False] * (len(frame) - 25)
    for row in frame.head(25).itertuples():
        assert abs(row.effect_exact - _value(exact, row)) < 1e-5
    assert frame["effect_exact"].iloc[25:].isna().all()


def test_scores_and_pairs_round_trip(tmp_path):
    model, pairs = tiny_model("gpt2"), random_pairs(lengths=(5, 7))
    est = atpstar.atp(model, pairs, kinds="attn", per_pair=True, progress=False)
    save_scores(est, tmp_path / "s.pt")
    back = load_scores(tmp_path / "s.pt")
    assert back.method == est.method and back.kinds == est.kinds and back.n_pairs == est.n_pairs
    for name in ("effect", "score", "mean_abs", "per_pair"):
        for kind in est.kinds:
            torch.testing.assert_close(getattr(back, name)[kind], getattr(est, name)[kind], rtol=0, atol=0, equal_nan=True)
    assert back.info["cost"] == est.info["cost"] and back.info["qk_fix"] is True
    save_pairs(pairs, tmp_path / "p.pt")
    again = load_pairs(tmp_path / "p.pt")
    for name in ("clean", "noise"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(again, name), getattr(pairs, name), strict=True))
    assert torch.equal(again.answer, pairs.answer) and torch.equal(again.distractor, pairs.distractor)
    assert again.metric == "logit_diff" and again.texts == pairs.texts


def test_load_run_gives_back_what_the_run_computed(tiny_dir, tmp_path):  # noqa: F811
    cfg = RunConfig(model=tiny_dir, task="city", pairs=3, methods=["atp*", "blocks"], kinds="head,neuron",
                    verify_budget="12nodes")
    folder = run(cfg, tmp_path / "run", progress=False)
    back = atpstar.load_run(tmp_path / "run")
    assert back.finished and list(back.scores) == ["atp*", "blocks"] and len(back.pairs) == 3
    pd.testing.assert_frame_equal(back.nodes, pd.read_parquet(tmp_path / "run" / "nodes.parquet"))
    pd.testing.assert_frame_equal(back.nodes, folder.nodes)
    model = atpstar.load_model(tiny_dir)
    fresh = atpstar.atp(model, back.pairs, kinds="head,neuron", progress=False)
    for kind in fresh.kinds:
        torch.testing.assert_close(back.scores["atp*"].score[kind], fresh.score[kind], atol=1e-6, rtol=1e-5)
    assert back.verified["name"].tolist() == back.nodes["name"].head(12).tolist()
    np.testing.assert_array_equal(back.nodes["effect_exact"].head(12), back.verified["effect"])
    assert back.meta["stages"]["pairs"]["texts"][0][0].startswith("The city of")
    assert repr(back).startswith("RunFolder(") and back.diagnosis is None
