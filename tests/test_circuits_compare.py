"""benchmarks/circuits_compare.py --quick end to end (tiny random Llama in float64, no download)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_compare_scores_every_method(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "benchmarks.circuits_compare", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    frame = pd.read_csv(tmp_path / "tiny-llama_random.csv").set_index("method")
    assert list(frame.index) == ["random", "AtP", "AtP*", "EAP", "EAP-IG-inputs", "EAP-IG-activations",
                                 "verified AtP*", "verified EAP-IG-inputs", "AtP* with IG signs",
                                 "verified AtP* with IG signs", "circuit IG", "verified circuit IG",
                                 "circuit IG + EAP-IG", "exact"]
    assert list(frame.signed_9) == pytest.approx([1.0] * 14) and list(frame.abs_9) == pytest.approx([1.0] * 14)  # clean
    assert frame.loc["EAP", "cpr"] == pytest.approx(frame.loc["AtP", "cpr"], abs=1e-9)  # EAP is plain edge AtP
    assert frame.loc["EAP", "cmd"] == pytest.approx(frame.loc["AtP", "cmd"], abs=1e-9)
    cost = frame.cost_per_pair
    assert cost["random"] == 0 < cost["AtP"] < cost["AtP*"]
    assert cost["AtP*"] < cost["verified AtP*"] < cost["exact"]
    assert 0 < cost["circuit IG"] < cost["verified circuit IG"]
    assert cost["circuit IG + EAP-IG"] == pytest.approx(cost["circuit IG"] + cost["EAP-IG-inputs"])
    # EAP-IG-inputs' signs: its signed ranking keeps the same edges first whenever magnitudes agree in order
    assert frame.loc["circuit IG + EAP-IG", "cpr"] != frame.loc["circuit IG", "cpr"]
    assert cost["AtP* with IG signs"] == pytest.approx(cost["AtP*"] + cost["EAP-IG-inputs"])
    assert frame.loc["AtP* with IG signs", "cmd"] == pytest.approx(frame.loc["AtP*", "cmd"], abs=1e-9)  # |AtP*| ranking
    assert frame.loc["verified AtP*", "verified"] == int(0.1 * frame.loc["AtP*", "edges"])
    assert "| tiny-llama | random | exact |" in done.stdout


def test_quick_heldout_evaluates_on_other_pairs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    runs = {}
    for extra in ([], ["--heldout", "5"]):
        done = subprocess.run([sys.executable, "-m", "benchmarks.circuits_compare", "--quick", "--out", str(tmp_path),
                               "--methods", "AtP,circuit IG", *extra],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    same = pd.read_csv(tmp_path / "tiny-llama_random.csv").set_index("method")
    held = pd.read_csv(tmp_path / "tiny-llama_random_heldout5.csv").set_index("method")
    assert list(held.index) == ["AtP", "circuit IG"] and list(held.signed_9) == pytest.approx([1.0, 1.0])
    assert held.loc["AtP", ["forward", "backward"]].tolist() == same.loc["AtP", ["forward", "backward"]].tolist()  # same scoring pairs
    assert abs(held.loc["AtP", "cpr"] - same.loc["AtP", "cpr"]) > 1e-6  # other evaluation pairs


def test_recompute_keeps_the_other_cached_methods(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    for methods, extra in (("random,AtP", []), ("AtP", ["--recompute"])):
        done = subprocess.run([sys.executable, "-m", "benchmarks.circuits_compare", "--quick", "--out", str(tmp_path),
                               "--methods", methods, *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(pd.read_csv(tmp_path / "tiny-llama_random.csv").method) == ["AtP", "random"]
