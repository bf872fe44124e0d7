"""The study's --quick mode end to end: truth, every method's ranking, recall curves, figures, docs."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.mark.slow
def test_study_quick_runs_end_to_end(tmp_path, smollm):
    import study

    curves = study.main(["--quick", "--out", str(tmp_path)])
    methods = set(curves["method"])
    assert {"oracle", "random", "AtP", "AtP+QKfix", "AtP+GradDrop", "AtP*", "Subsampling", "Blocks",
            "Hierarchical"} <= methods
    oracle = curves[curves["method"] == "oracle"]
    assert np.array_equal(oracle["cost"].to_numpy(), oracle["k"].to_numpy().astype(float))  # oracle cost == k
    for method, part in curves.groupby("method"):
        assert (part["cost"] >= part["k"] - 1e-9).all(), method  # nobody beats the oracle
        assert (part["cost_relaxed"] <= part["cost"] + 1e-9).all(), method
    # a gradient estimate is far better than chance on IOI's late-layer attention nodes
    top10 = curves[(curves["k"] == 10) & (curves["kind"] == "all")].set_index("method")["cost"]
    assert top10["AtP+QKfix"] < top10["random"] / 5
    text = (tmp_path / "study.md").read_text()
    assert "Cost to verify the true top-10" in text and "Claim checks" in text
    pngs = {p.name for p in (tmp_path / "study").glob("*.png")}
    assert {"curves_ioi_single.png", "scatter_ioi_pair0_attn.png"} <= pngs
    assert (tmp_path / "results" / "truth_ioi.npz").exists()
