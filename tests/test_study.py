"""The study's --quick mode end to end: truth, every method's ranking, recall curves, figures, docs."""

from pathlib import Path

import numpy as np
import pytest


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_study_quick_runs_end_to_end_and_leaves_the_docs_alone(tmp_path, smollm, monkeypatch):
    """`python -m benchmarks.study --quick`, as the README offers it (no --out): a new temporary folder gets
    the page, figures and results; nothing under docs/ or the cached results changes."""
    import tempfile

    from benchmarks import study

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the quick run's temporary folder goes here
    published = {**snapshot(study.DOCS), **snapshot(study.DOCS.parent / "benchmarks" / "results")}
    curves = study.main(["--quick"])
    assert {**snapshot(study.DOCS), **snapshot(study.DOCS.parent / "benchmarks" / "results")} == published
    (tmp_path,) = tmp_path.glob("atpstar-study-quick-*")
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


def test_quick_mode_writes_outside_the_docs(tmp_path, monkeypatch):
    """Without --out a quick run writes to a new temporary folder; --out (or --results) inside docs/ or the
    cached results is refused, so a trial run cannot overwrite the published numbers."""
    import tempfile

    from benchmarks import study
    from benchmarks.studylib import truth

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = study.parse(["--quick"])
    assert args.out.parent == tmp_path and args.results == args.out / "results" and args.figures == args.out / "study"
    assert study.parse([]).out == study.DOCS  # the full study still publishes
    for argv in (["--out", str(study.DOCS)], ["--out", str(study.DOCS / "trial")],
                 ["--results", str(study.DOCS.parent / truth.ROOT)], ["--results", str(study.DOCS / "results")]):
        with pytest.raises(SystemExit, match="--quick would write its trial numbers into"):
            study.parse(["--quick", *argv])


def test_neurons_at_every_position_truth_matches_full_patching(tmp_path):
    """The sampled neuron truth (every position) equals the same nodes of a full acp run, survives a save
    and load, and its frame rows are the nodes in the order the study's rankings are matched on."""
    import atpstar
    from atpstar import NodeKind
    from conftest import random_pairs, tiny_model
    from benchmarks.studylib import frames, neuronpos

    model, pairs = tiny_model("llama"), random_pairs(lengths=(6, 8))
    layers, units = neuronpos.sample(model, 2, 5, seed=3)
    assert layers[0] == 0 and layers[-1] == model.n_layers - 1 and units.shape == (2, 5)
    neuronpos.compute(model, "t", pairs, layers, units, root=tmp_path, progress=False)
    truth = neuronpos.load("t", tmp_path)
    full = atpstar.acp(model, pairs, kinds="neuron", per_pair=True, progress=False).per_pair[NodeKind.NEURON].numpy()
    expected = np.stack([full[:, layer, unit] for layer, unit in zip(layers, units)], 1)  # (P, L, U, T)
    assert np.allclose(truth.effects, expected, atol=1e-5, equal_nan=True)
    frame = frames.truth_frame(model, truth, neuronpos.GROUP)
    mean = np.nanmean(expected, axis=0)
    for row in frame.sample(10, random_state=0).itertuples():
        li, ui = list(layers).index(row.layer), list(units[list(layers).index(row.layer)]).index(row.unit)
        assert row.effect == pytest.approx(mean[li, ui, row.pos], abs=1e-5)
    single = frames.truth_frame(model, truth.subset([0]), neuronpos.GROUP)  # the 6-token pair: 6 positions
    assert len(single) == 2 * 5 * 6 and set(frames.subsets(neuronpos.GROUP, single)["earlier"]["pos"]) == set(range(5))
