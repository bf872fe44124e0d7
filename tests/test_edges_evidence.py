"""``python -m benchmarks.edges_evidence --quick`` end to end (tiny random Llama, no download), and its
recall-cost measure (``atpstar.recall_cost`` over the edge universe, in the benchmark's rank order)."""

import json

import numpy as np
import pandas as pd

from benchmarks import edges_baselines_evidence, edges_evidence
from benchmarks.edgeslib.curves import ranks_of, recall


def test_recall_over_the_universe_matches_brute_force():
    rng = np.random.default_rng(0)
    value = np.round(rng.random(30), 1)  # ties in the truth
    score = rng.random(30)
    table = pd.DataFrame({"name": [f"L0.head.H{i}@3 -> L1.q.H0@3" for i in range(30)], "exact": -value})
    got = recall(table, ranks_of(score), 10, estimation=2.5)
    assert np.array_equal(got["cost"], got["verified"] + 2.5)
    got = got["verified"].to_numpy()
    order = np.argsort(-score, kind="stable")
    for k in range(1, 11):
        kth = np.sort(value)[::-1][k - 1]
        must = value > kth  # every edge above the k-th value, then the cheapest ties
        n_tied = k - must.sum()
        seen, tied = 0, 0
        for n, i in enumerate(order, 1):
            seen += must[i]
            tied += value[i] == kth
            if seen == must.sum() and tied >= n_tied:
                break
        assert got[k - 1] == n, k
    assert list(ranks_of(np.array([0.1, np.nan, 0.5, 0.1]))) == [1, 3, 0, 2]  # NaN last, ties by index


def test_quick_runs_end_to_end_and_resumes(tmp_path):
    summary = edges_evidence.main(["--quick", "--out", str(tmp_path)])
    assert summary["n_edges"] > 0 and summary["pairs"] == 2
    curves = pd.read_csv(tmp_path / "recall_cost.csv")
    assert np.array_equal(curves["oracle"], curves["k"])
    for method in ("AtP", "AtP+QKfix", "AtP+GradDrop", "AtP*", "random"):
        assert (curves[method] >= curves["k"] - 1e-9).all(), method  # nobody beats the oracle
        assert (np.diff(curves[method]) >= -1e-9).all(), method  # monotone in k
    timing = json.loads((tmp_path / "timing.json").read_text())
    for what in ("forward_backward", "node_atpstar", "edge_atpstar", "edge_patch", "node_patch"):
        assert timing[what]["seconds"] > 0 and timing[what]["peak_rss_mb"] > 0, what
    assert timing["edge_patch"]["patches"] > 0 and timing["backward_ratio"] > 0
    truth = np.load(tmp_path / "edge_truth.npz")
    readers = pd.read_csv(tmp_path / "readers.csv")
    assert len([k for k in truth.files if not k.endswith("_seconds")]) == len(readers)
    assert {"circuit.png", "recall_cost.png"} <= {p.name for p in (tmp_path / "figures").glob("*.png")}
    again = edges_evidence.main(["--quick", "--out", str(tmp_path), "--stage", "report"])  # from the caches
    assert again["cost_at"] == summary["cost_at"]
    # the joint-patching baselines on the same universe and truth (benchmarks.edges_baselines_evidence)
    frame = edges_baselines_evidence.main(["--quick", "--out", str(tmp_path)])
    n_edges = sum(truth[k].shape[1] for k in truth.files if not k.endswith("_seconds"))
    assert np.array_equal(frame["oracle"], frame["k"])
    for method in ("Subsampling", "Blocks", "Hierarchical"):
        assert (frame[method] >= frame["k"]).all() and (np.diff(frame[method]) >= 0).all(), method
        assert (frame[method + " verified"] <= n_edges).all(), method
    cached = np.load(tmp_path / "baselines.npz")
    assert cached["Blocks_cost"][0] > 0 and (tmp_path / "figures" / "baselines_recall_cost.png").exists()
    again = edges_baselines_evidence.main(["--quick", "--out", str(tmp_path)])  # from the cache
    pd.testing.assert_frame_equal(again, frame)
