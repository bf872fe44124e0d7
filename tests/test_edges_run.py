"""``atpstar run --level edges|both``: the run folder gains edges.parquet/.csv and run.json the level,
load_run reads the edges back, the report draws the circuit, resume skips finished stages, and options
are checked before the model loads. The edge engine is replaced by a planted one here (its numbers are
known), so these tests check the pipeline, not the estimator (tests/test_edges_*.py do that)."""

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import planted_edge_effects
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.cost import Cost
from atpstar.edges import EdgeGraph, EdgeScores
from atpstar.run.cli import main
from atpstar.run.folder import load_edge_scores
from atpstar.run.pipeline import RunConfig, resume, run
from atpstar.run.report import SECTIONS
import atpstar.verification.loop

REAL_VERIFY = atpstar.verification.loop.verify

CALLS = {"atp": 0, "verify": 0}


def planted_atp(model, pairs, qk_fix=True, graddrop=True, progress=False):
    """Edge 'AtP': effect = a fixed pseudo-random number per (writer, reader, pos), NaN where no edge."""
    CALLS["atp"] += 1
    graph = EdgeGraph.of(model)
    effect = planted_edge_effects(graph, max(pairs.lengths), seed=7)
    info = {"cost": Cost(forward=2.0 * len(pairs), backward=1.0 * len(pairs), pairs=len(pairs), seconds=0.01,
                         backward_ratio=2.0), "qk_fix": qk_fix, "graddrop": graddrop}
    return EdgeScores("atp*" if qk_fix and graddrop else "atp", graph, effect, effect.abs(), len(pairs), info=info)


class PlantedVerification:
    def __init__(self, frame, stopped):
        self.frame, self.stopped = frame, stopped
        self.cost = Cost(forward=float(len(frame)), pairs=1, seconds=0.01)
        self.patched, self.reused, self.stop_index = len(frame), 0, len(frame)

    def __len__(self):
        return len(self.frame)

    def to_frame(self):
        return self.frame


def planted_verify(model, pairs, scores, budget=None, stop=None, batch_size=None, progress=False, **options):
    """'Exact' effect = 0.9 x the estimate, for the top ``budget.nodes`` edges (nodes: the real verification)."""
    if not isinstance(scores, EdgeScores):
        return REAL_VERIFY(model, pairs, scores, budget=budget, stop=stop, batch_size=batch_size, progress=progress,
                           **options)
    CALLS["verify"] += 1
    top = scores.to_frame(top=budget.nodes)
    frame = pd.DataFrame({"name": top["name"], "effect_exact": 0.9 * top["effect"]})
    return PlantedVerification(frame, "budget")


@pytest.fixture
def planted(monkeypatch):
    module = types.ModuleType("atpstar.edges.atp")
    module.atp = planted_atp
    monkeypatch.setitem(sys.modules, "atpstar.edges.atp", module)
    monkeypatch.setattr(atpstar.verification.loop, "verify", planted_verify)
    CALLS.update(atp=0, verify=0)


def test_edge_level_run_folder_report_and_resume(tiny_dir, tmp_path, planted):  # noqa: F811
    out = tmp_path / "edges"
    folder = run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="12edges"), out, progress=False)
    assert CALLS == {"atp": 1, "verify": 1}
    meta = json.loads((out / "run.json").read_text())
    assert meta["config"]["level"] == "edges" and meta["status"] == "done"
    assert meta["stages"]["edges"]["verified"] == 12 and meta["stages"]["edges"]["n_kv_heads"] == 2
    assert "edges" in meta["costs"] and "verify:edges" in meta["costs"]
    assert not (out / "nodes.parquet").exists() and folder.nodes is None and not folder.scores
    edges = folder.edges
    assert edges.equals(pd.read_parquet(out / "edges.parquet"))
    assert len(pd.read_csv(out / "edges.csv")) == len(edges)
    # the table is the ranking: best first, ranks 1.., the engine's values, the top 12 verified
    scores = folder.edge_scores
    assert isinstance(scores, EdgeScores) and torch.equal(scores.score.isnan(), ~scores.graph.valid[..., None].expand_as(scores.score))
    assert edges["rank"].tolist() == list(range(1, len(edges) + 1))
    assert (np.diff(edges["score"].to_numpy()) <= 0).all()
    assert len(edges) == int(scores.graph.valid.sum()) * scores.n_pos
    top = scores.to_frame(top=5)
    assert edges["name"].head(5).tolist() == top["name"].tolist()
    np.testing.assert_allclose(edges["effect"].head(5), top["effect"])
    assert edges["verified"].tolist() == [True] * 12 + [False] * (len(edges) - 12)
    np.testing.assert_allclose(edges["effect_exact"].head(12), 0.9 * edges["effect"].head(12))
    tokens = meta["stages"]["pairs"]["tokens"]
    assert edges["token"].tolist() == [tokens[p] for p in edges["pos"]]
    # the report: every section, the circuit drawn and its table, node sections say why they are empty
    page = (out / "report.html").read_text()
    import re
    assert re.findall(r'<section id="([\w-]+)"', page) == list(SECTIONS)
    circuit = re.search(r'<section id="circuit">(.*?)</section>', page, re.S).group(1)
    assert "data:image/png;base64," in circuit and "the verified edges with their exact effects" in circuit
    names = re.findall(r'<td class="t">([^<]*-&gt;[^<]*)</td>', circuit)
    assert [n.replace("&gt;", ">") for n in names] == edges["name"].head(200).tolist()
    assert "no node table" in page
    # resume: nothing is recomputed
    meta["status"] = "interrupted"
    (out / "run.json").write_text(json.dumps(meta))
    (out / "edges.parquet").unlink()
    again = resume(out, progress=False)
    assert CALLS == {"atp": 1, "verify": 1} and again.edges.equals(edges)


def test_both_levels_and_the_command_line(tiny_dir, tmp_path, planted, capsys):  # noqa: F811
    out = tmp_path / "both"
    code = main(["run", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--level", "both",
                 "--verify-budget", "5nodes", "--out", str(out), "--quiet", "--top", "3"])
    assert code == 0
    folder = atpstar.load_run(out)
    assert folder.meta["config"]["level"] == "both" and len(folder.nodes) and len(folder.edges)
    assert folder.verified is not None and len(folder.verified_edges) == 5
    printed = capsys.readouterr().out
    assert "top 3 of" in printed and "edges ranked by atp*" in printed and "edges.parquet" in printed
    page = (out / "report.html").read_text()
    assert "no node table" not in page and page.count("data:image/png;base64,") >= 3
    code = main(["report", str(out)])
    assert code == 0
    # export: the verified edges form the EAP-IG graph's circuit
    assert main(["export", str(out)]) == 0
    graph = json.loads((out / "eap-graph.json").read_text())
    assert set(graph) == {"cfg", "nodes", "edges"} and graph["cfg"]["d_model"] == 32
    members = {n for n, v in graph["edges"].items() if v["in_graph"]}
    from atpstar.edges.export import from_eap_graph
    back = from_eap_graph(graph)
    wanted = {n.replace("@", " ").split()[0] + " -> " + n.split("-> ")[1].split("@")[0] for n in folder.verified_edges["name"]}
    assert set(back.loc[back["in_graph"], "name"]) == wanted and len(members) >= len(wanted)
    assert main(["export", str(out), "--circuit", "top:3", "--out", str(tmp_path / "ioi_tiny" / "g.json")]) == 0
    top3 = json.loads((tmp_path / "ioi_tiny" / "g.json").read_text())
    assert from_eap_graph(top3)["in_graph"].sum() == 3  # our edges (a key/value group spans 2 EAP-IG edges)
    assert main(["export", str(out), "--circuit", "top:x"]) == 2
    assert "use verified, top:N" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--level", "arcs"], "invalid choice: 'arcs'"),
    (["--level", "edges", "--method", "acp"], "must be one of atp*"),
    (["--level", "edges", "--method", "blocks,iterative"], "iterative ranks nodes only"),
])
def test_bad_level_options_fail_before_the_model_loads(argv, message, tmp_path, capsys, monkeypatch):
    import atpstar.substrate.model as model_module

    monkeypatch.setattr(model_module, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    try:
        code = main(["run", "--out", str(tmp_path / "x"), *argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_level_is_checked_in_python_too():
    with pytest.raises(ValueError, match="unknown level 'arcs'"):
        RunConfig(level="arcs").validate()
    assert RunConfig.from_dict({"task": "ioi"}).level == "nodes"  # run.json from before --level


def test_edge_run_verifies_with_exact_edge_patching(tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    """Planted estimates, real verification: the folder's effect_exact is edge_acp of the top edges."""
    module = types.ModuleType("atpstar.edges.atp")
    module.atp = planted_atp
    monkeypatch.setitem(sys.modules, "atpstar.edges.atp", module)
    folder = run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="6edges"), tmp_path / "r", progress=False)
    verified = folder.edges[folder.edges["verified"]]
    assert verified["rank"].tolist() == list(range(1, 7))
    from atpstar.edges.patching import edge_acp
    exact = edge_acp(atpstar.load_model(tiny_dir), folder.pairs, verified["name"].tolist()).to_frame().set_index("name")
    np.testing.assert_allclose(verified["effect_exact"], exact.loc[verified["name"], "effect"], rtol=1e-4, atol=2e-5)
    assert folder.meta["stages"]["verify:edges"]["stopped"] == "budget"


def test_the_readme_edge_example_runs(tiny_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The README's edge example, on the tiny model (the planted estimator stands in when the engine's
    edge AtP is not installed); it writes an EAP-IG graph whose edges are the model's."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"  ```python\n(.*?)  ```", readme, re.S).group(1)
    code = "\n".join(line[2:] for line in block.splitlines())
    model = atpstar.load_model(tiny_dir)
    pairs = atpstar.tasks.ioi(model, n=2, seed=0)
    import importlib.util

    if importlib.util.find_spec("atpstar.edges.atp") is None:  # no engine yet: the planted one stands in
        monkeypatch.setattr(atpstar.edges, "atp", planted_atp, raising=False)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"atpstar": atpstar, "model": model, "pairs": pairs})
    assert "->" in capsys.readouterr().out
    graph = json.loads((tmp_path / "circuit.json").read_text())
    assert graph["cfg"]["n_layers"] == model.n_layers and any(v["in_graph"] for v in graph["edges"].values())


def test_edge_run_with_the_engine(tiny_dir, tmp_path):  # noqa: F811
    """No planting: the folder's edge scores are atpstar.edges.atp's (AtP*), its verified effects edge_acp's."""
    folder = run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="4edges"), tmp_path / "r", progress=False)
    model = atpstar.load_model(tiny_dir)
    again = atpstar.edges.atp(model, folder.pairs)
    torch.testing.assert_close(folder.edge_scores.score, again.score.to(folder.edge_scores.score.dtype), equal_nan=True)
    top = again.to_frame(top=4)
    assert folder.edges["name"].head(4).tolist() == top["name"].tolist()
    exact = atpstar.edges.edge_acp(model, folder.pairs, top["name"].tolist()).to_frame().set_index("name")
    np.testing.assert_allclose(folder.edges["effect_exact"].head(4), exact.loc[top["name"], "effect"], rtol=1e-4, atol=2e-5)
    assert folder.meta["stages"]["edges"]["method"] == "atp*" and folder.meta["costs"]["edges"]["per_pair"] > 0


def test_a_baseline_ranks_the_edges(tiny_dir, tmp_path):  # noqa: F811
    """--level edges --method blocks,atp: Blocks' edge ranking is verified and tabled, AtP's edge scores are
    kept beside it; both are the library's own results; resume recomputes nothing."""
    out = tmp_path / "r"
    code = main(["run", "--model", tiny_dir, "--pairs", "2", "--level", "edges", "--method", "blocks,atp",
                 "--verify-budget", "5edges", "--out", str(out), "--quiet"])
    assert code == 0
    folder = atpstar.load_run(out)
    model = atpstar.load_model(tiny_dir)
    want = atpstar.edges.blocks(model, folder.pairs)
    torch.testing.assert_close(folder.edge_scores.effect, want.effect, equal_nan=True)
    assert folder.edges["name"].head(5).tolist() == want.to_frame(top=5)["name"].tolist()
    assert folder.edges["verified"].sum() == 5
    exact = atpstar.edges.edge_acp(model, folder.pairs, folder.edges["name"].head(5).tolist()).to_frame().set_index("name")
    np.testing.assert_allclose(folder.edges["effect_exact"].head(5), exact.loc[folder.edges["name"].head(5), "effect"],
                               rtol=1e-4, atol=2e-5)
    stages = folder.meta["stages"]
    assert stages["edges"]["method"] == "blocks" and stages["edges:atp"]["method"] == "atp"
    assert stages["edges"]["per_pair"] > 0 and "edges:atp" in folder.meta["costs"]
    kept = load_edge_scores(out / "stages" / "edge-scores-atp.pt")
    torch.testing.assert_close(kept.score, atpstar.edges.atp(model, folder.pairs, qk_fix=False, graddrop=False).score
                               .to(kept.score.dtype), equal_nan=True)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("edge-scores-*.pt")}
    assert len(before) == 2
    meta = json.loads((out / "run.json").read_text())
    meta["status"] = "interrupted"
    (out / "run.json").write_text(json.dumps(meta))
    resume(out, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("edge-scores-*.pt")} == before


def test_edge_diagnostic_in_the_pipeline(tiny_dir, tmp_path, capsys):  # noqa: F811
    """``--level both --diagnose``: nodes and edges are each diagnosed; the edge diagnosis is
    stages/edge-diagnosis.json (+ edge-suspects.parquet), recorded in run.json and its costs, shown in the
    report's circuit section, equal to a direct ``diagnose_edges`` call, and resumed from its checkpoint."""
    from atpstar.diagnostics import diagnose_edges

    out = tmp_path / "both"
    config = RunConfig(model=tiny_dir, pairs=2, kinds="head", level="both", verify_budget="6nodes", diagnose=True,
                       samples=200, p=0.1)
    with pytest.warns(UserWarning, match="is not below the largest verified"):  # tiny model: θ rules out little
        folder = run(config, out, progress=False)
    d = folder.edge_diagnosis
    assert folder.diagnosis is not None and d is not None  # both levels diagnosed
    assert d["units"] == "edges" and d["verified"] == 6 and d["samples"] == 200 and 0 < d["theta"] < float("inf")
    assert d["estimates"] == "edge atp*" and "unverified edge" in d["statement"]
    suspects = folder.edge_suspects
    assert len(suspects) and suspects["name"].str.contains(" -> ").all()
    assert suspects["name"].tolist() == [s["name"] for s in d["suspects"]]
    meta = folder.meta
    assert meta["stages"]["diagnose:edges"]["theta"] == d["theta"] and meta["edge_diagnostic"]["theta"] == d["theta"]
    assert meta["costs"]["diagnose:edges"]["per_pair"] > 0
    model = atpstar.load_model(tiny_dir)
    direct = diagnose_edges(model, folder.pairs, folder.verified_edges[["writer", "reader", "pos"]],
                            estimates=folder.edge_scores, samples=200, p=0.1, progress=False)
    assert direct.theta == pytest.approx(d["theta"], rel=1e-6)
    import re
    page = (out / "report.html").read_text()
    circuit = re.search(r'<section id="circuit">(.*?)</section>', page, re.S).group(1)
    assert "Edge diagnostic" in circuit and 'id="edge-suspects"' in circuit
    assert f"{d['theta']:.4g}" in circuit and "unverified edge" in circuit
    node_part = re.search(r'<section id="diagnostic">(.*?)</section>', page, re.S).group(1)
    assert "unverified node" in node_part and "unverified edge" not in node_part
    # resume: the edge diagnosis redone from its checkpoint, no subset patched again
    meta["status"] = "interrupted"
    (out / "run.json").write_text(json.dumps(meta))
    (out / "stages" / "edge-diagnosis.json").unlink()
    with pytest.warns(UserWarning, match="is not below the largest verified"):
        again = resume(out, progress=False)
    assert again.edge_diagnosis["resumed"] == 200 and again.edge_diagnosis["theta"] == pytest.approx(d["theta"])
    assert again.meta["stages"]["diagnose:edges"]["per_pair"] == pytest.approx(4.0)  # the captures only
    # the command line at --level edges
    code = main(["run", "--model", tiny_dir, "--pairs", "2", "--level", "edges", "--verify-budget", "4edges",
                 "--diagnose", "--samples", "100", "--p", "0.2", "--out", str(tmp_path / "e"), "--quiet"])
    assert code == 0 and "edge diagnostic: Patched 100 random subsets" in capsys.readouterr().out
    edge_only = atpstar.load_run(tmp_path / "e")
    assert edge_only.diagnosis is None and edge_only.edge_diagnosis["verified"] == 4


def test_theta_stop_on_edges(tiny_dir, tmp_path):  # noqa: F811
    """``--level edges --stop theta``: edge verification stops on the edge diagnostic's θ (one draw), and its
    subsets give the run's edge diagnosis, with the θ-vs-verified history, at no further patch."""
    out = tmp_path / "theta"
    config = RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="60edges", stop="theta:target=5",
                       samples=200, p=0.1)
    with pytest.warns(UserWarning, match="is not below the largest verified"):  # tiny model: θ rules out little
        folder = run(config, out, progress=False)
    d, stage = folder.edge_diagnosis, folder.meta["stages"]["verify:edges"]
    assert d is not None and folder.diagnosis is None
    assert stage["stopped"].startswith("theta below target") and "unverified edge" in stage["stopped"]
    history = d["theta_history"]
    # the first check, after the first chunk (one full batch of patches: on the tiny model, the whole budget)
    assert len(history) == 1 and history[0]["verified"] == len(folder.verified_edges) <= 60
    assert d["theta"] == pytest.approx(history[0]["theta"]) and 0 < d["theta"] < 5
    assert "unverified edge" in d["statement"] and d["verified"] == len(folder.verified_edges)
    # the edge diagnosis is the rule's single draw: 200 subsets per pair (at most one pass each) and the captures
    assert 4.0 < folder.meta["stages"]["diagnose:edges"]["per_pair"] <= 4.0 + 200
    # without the stop the same budget verifies all 60 and bounds nothing
    plain = run(RunConfig(model=tiny_dir, pairs=2, level="edges", verify_budget="60edges"), tmp_path / "plain",
                progress=False)
    assert len(plain.verified_edges) == 60 and plain.edge_diagnosis is None
