"""``--edge-universe``: the edges the edge diagnostic bounds (all, the top M of the ranking, or every edge into
the N readers with the most edge score), parsed before the model loads, and the diagnosis it gives in a run."""

import pytest
import torch
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.diagnostics import diagnose_edges
from atpstar.edges import EdgeSet
from atpstar.run.cli import main
from atpstar.run.options import parse_edge_universe
from atpstar.run.pipeline import RunConfig, run


def test_parse():
    assert parse_edge_universe(None) is None and parse_edge_universe("all") is None
    assert parse_edge_universe("top:20000") == ("top", 20000) and parse_edge_universe("Readers:6") == ("readers", 6)
    for bad in ("top", "top:0", "top:-3", "top:1.5", "heads:3", "readers:x"):
        with pytest.raises(ValueError, match="cannot read --edge-universe"):
            parse_edge_universe(bad)


@pytest.mark.parametrize("argv, message", [
    (["--level", "edges", "--diagnose", "--verify-budget", "4edges", "--edge-universe", "top:0"], "top:M"),
    (["--level", "edges", "--verify-budget", "4edges", "--edge-universe", "top:50"], "--diagnose or --stop theta"),
    (["--diagnose", "--edge-universe", "readers:2"], "--level edges"),
])
def test_bad_universe_fails_before_the_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    import atpstar.substrate.model as model_module

    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    code = main(["run", "--out", str(tmp_path / "x"), *argv])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _top(scores, m):
    """The m top-scored edges, by hand (a full sort)."""
    frame = scores.to_frame().sort_values("score", ascending=False, kind="stable").head(m)
    return set(frame["name"])


def test_top_universe_in_a_run(tiny_dir, tmp_path):  # noqa: F811
    out = tmp_path / "top"
    with pytest.warns(UserWarning, match="choose a smaller --edge-universe"):  # tiny model: a loose θ, said so
        folder = run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="5edges", diagnose=True,
                               samples=150, p=0.1, edge_universe="top:300"), out, progress=False)
    d = folder.edge_diagnosis
    assert d["verified"] == 5 and d["unverified"] + d["verified"] == 300 and d["edge_universe"] == "top:300"
    assert d["statement"].startswith("Universe (--edge-universe top:300): the 300 top-ranked edges of atp*'s ranking.")
    assert folder.meta["stages"]["diagnose:edges"]["edge_universe"] == "top:300"
    top = _top(folder.edge_scores, 300)
    assert set(folder.edge_suspects["name"]) <= top and set(folder.verified_edges["name"]) <= top
    # the same bound as a direct call on that universe
    model = atpstar.load_model(tiny_dir)
    direct = diagnose_edges(model, folder.pairs, folder.verified_edges[["writer", "reader", "pos"]],
                            estimates=folder.edge_scores, edges=sorted(top), samples=150, p=0.1, progress=False)
    assert direct.n_unverified == d["unverified"] and direct.theta == pytest.approx(d["theta"], rel=1e-9)
    # every edge (the default) is a larger universe
    every = int(folder.edge_scores.score.isfinite().sum())
    assert every > 1000


def test_readers_universe_with_the_theta_stop(tiny_dir, tmp_path):  # noqa: F811
    folder = run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="40edges", stop="theta:target=5",
                           samples=150, p=0.1, edge_universe="readers:2"), tmp_path / "r", progress=False)
    scores, d = folder.edge_scores, folder.edge_diagnosis
    per_reader = scores.score.nan_to_num(0.0).sum((0, 2))
    readers = per_reader.argsort(descending=True)[:2]
    into = scores.score[:, readers].isfinite().sum()  # every scored edge into those two readers
    assert d["unverified"] + d["verified"] == int(into) and 0 < d["static"] < d["unverified"]  # static: among the unverified
    names = [scores.graph.reader_names[int(r)] for r in readers.sort().values]
    assert f"every edge into the 2 readers with the largest summed atp* edge score, {int(into):,} edges: " \
           f"{', '.join(names)}" in d["statement"]
    assert all(n.split(" -> ")[1].split("@")[0] in names for n in folder.edge_suspects["name"])
    assert d["theta_history"] and d["theta"] < 5


def test_baseline_plan_counts_the_patches(tiny_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    """A baseline over every edge says what it will patch: Blocks' count is the blocks it then patches; above
    SLOW_PATCHES per pair the note is a warning (shown with --quiet too)."""
    from atpstar.edges import blocks
    from atpstar.run import edge_stages

    model = atpstar.load_model(tiny_dir)
    pairs = atpstar.tasks.ioi(model, n=2, seed=0)
    text, slow = edge_stages.baseline_plan(model, pairs, "blocks")
    done = blocks(model, pairs)
    n_edges = int(done.score.isfinite().sum())
    assert not slow and text.startswith(f"blocks over every edge: {n_edges:,} edges in {done.info['blocks']:,} blocks")
    assert f"{done.info['blocks']:,} patches per pair, {2 * done.info['blocks']:,} in all" in text
    text, _ = edge_stages.baseline_plan(model, pairs, "subsampling")
    assert f"1000 random subsets of about {0.01 * n_edges:,.0f} edges" in text
    monkeypatch.setattr(edge_stages, "SLOW_PATCHES", 10)
    code = main(["run", "--model", tiny_dir, "--pairs", "2", "--level", "edges", "--method", "blocks",
                 "--verify-budget", "3edges", "--out", str(tmp_path / "b"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 0 and f"atpstar: warning: blocks over every edge: {n_edges:,} edges" in err and "hours" in err


def test_a_useless_theta_is_flagged():
    """The edge run's warning is the one function the node run uses too (theta_warning, unit="edge")."""
    import pandas as pd

    from atpstar.diagnostics.usefulness import theta_warning

    verified = pd.DataFrame({"name": ["a", "b"], "effect_exact": [-6.05, 1.0]})
    note = theta_warning(34.27, verified, unit="edge")
    assert note.startswith("the edge diagnostic's θ = 34.27 is not below the largest verified |effect| (6.05)")
    assert "--edge-universe top:M or readers:N" in note
    assert "smaller --edge-universe" in theta_warning(6.05, verified, unit="edge", universe="top:20000")
    assert theta_warning(3.95, verified, unit="edge", universe="readers:6") is None
    assert theta_warning(float("inf"), verified.head(0), unit="edge") is None
