"""The HTML report: its content matches the run folder, it is self-contained (no network request, checked
in a real headless browser), the table sorts, it stays small for runs of ~10^6 nodes, and the
recall-vs-cost curve is the one :func:`atpstar.recall_cost` defines."""

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pytest
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.run.pipeline import RunConfig, run
from atpstar.run.report import SECTIONS, build, data, write_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install -y chromium); "
                                                             "the headless-browser check of the report is skipped")
QUIET_BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--mute-audio",
                 "--disable-features=Translate,OptimizationHints,MediaRouter,SpellCheck"]


@pytest.fixture(scope="module")
def folder(tiny_dir, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("report") / "run"
    cfg = RunConfig(model=tiny_dir, task="ioi", pairs=3, methods=["atp*", "acp"], kinds="all",
                    verify_budget="40nodes", diagnose=True, samples=200)
    run(cfg, out, progress=False)
    return out


def _rows(page: str, table: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table}".*?<tbody>(.*?)</tbody>', page, re.S).group(1)
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]


def test_report_shows_the_run(folder):
    page = (folder / "report.html").read_text()
    assert re.findall(r'<section id="([\w-]+)"', page) == list(SECTIONS)
    nodes = atpstar.load_run(folder).nodes
    rows = _rows(page, "top-nodes-table")
    assert len(rows) == data.TOP_ROWS < len(nodes)
    header = re.findall(r'data-col="([^"]+)"', re.search(r'<table id="top-nodes-table".*?</thead>', page, re.S).group(0))
    names = [r[header.index("name")] for r in rows]
    assert names == nodes["name"].head(data.TOP_ROWS).tolist()
    exact = [float(r[header.index("effect_exact")]) if r[header.index("effect_exact")] else np.nan for r in rows]
    np.testing.assert_allclose(exact, nodes["effect_exact"].head(data.TOP_ROWS), rtol=1e-3, atol=1e-6)
    theta = atpstar.load_run(folder).diagnosis["theta"]
    assert f'<span class="theta">{theta:.4g}</span>' in page and "With probability at least 0.95" in page
    assert page.count("data:image/png;base64,") == 4  # heatmaps, positions, scatter, recall
    for token in atpstar.load_run(folder).meta["stages"]["pairs"]["tokens"]:
        assert f">{token}<small>" in page


def test_report_is_self_contained(folder):
    page = (folder / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//|@import|fetch\(|XMLHttpRequest", page)


def test_report_without_ground_truth_or_diagnostic_says_how_to_get_them(tiny_dir, tmp_path):  # noqa: F811
    run(RunConfig(model=tiny_dir, pairs=2, kinds="head", verify_budget="0"), tmp_path / "r", progress=False)
    page = (tmp_path / "r" / "report.html").read_text()
    assert "add <code>acp</code> to <code>--method</code>" in page and "add <code>--diagnose</code>" in page
    assert "No verified nodes" in page and page.count("data:image/png;base64,") == 2


def test_recall_curve_is_recall_cost_of_each_ranking():
    # 6 nodes; exact |effect| 6..1 in order; method "atp" ranks them 3rd, 1st, 6th, 2nd, 4th, 5th
    nodes = pd.DataFrame({"kind": "head", "layer": 0, "unit": np.arange(6), "pos": 0,
                          "score_acp": [6.0, 5, 4, 3, 2, 1], "score_atp": [4.0, 6, 1, 5, 3, 2]})
    curves = data.recall_curves(nodes, ["atp", "acp"], {"atp": 2.5}, k=3)
    cost, recall = curves["atp"]
    # true top-3 = units 0, 1, 2 at ranks 3, 1, 6 of atp's ranking: the true top-1 is verified after 3
    # nodes, the top-2 after 3 too, the top-3 after 6
    np.testing.assert_allclose(cost, [2.5, 2.5 + 3, 2.5 + 3, 2.5 + 6])
    np.testing.assert_allclose(recall, [0, 1, 2, 3])
    np.testing.assert_allclose(curves["oracle"][0], [1, 2, 3])
    assert data.recall_curves(nodes, ["atp"], {}) is None


def test_a_large_run_gives_a_small_page():
    """~800k nodes (SmolLM2-sized): the page aggregates and shows the top, staying well under 3 MB."""
    rng = np.random.default_rng(0)
    parts = []
    for kind, units in (("q", 9), ("k", 3), ("v", 3), ("head", 9), ("neuron", 1536)):
        layer, unit, pos = (a.ravel() for a in np.meshgrid(np.arange(30), np.arange(units), np.arange(17), indexing="ij"))
        parts.append(pd.DataFrame({"kind": kind, "layer": layer, "unit": unit, "pos": pos}))
    nodes = pd.concat(parts, ignore_index=True)
    nodes["score_atpstar"] = rng.exponential(size=len(nodes))
    nodes = nodes.sort_values("score_atpstar", ascending=False, ignore_index=True)
    nodes["effect_atpstar"] = nodes["score_atpstar"]
    nodes.insert(0, "rank", np.arange(1, len(nodes) + 1))
    nodes["name"], nodes["token"] = "n", "t"
    nodes["verified"] = nodes["rank"] <= 500
    nodes["effect_exact"] = np.where(nodes["verified"], nodes["effect_atpstar"] * 0.9, np.nan)
    meta = {"config": {"methods": ["atp*"], "model": "m", "task": "ioi", "kinds": "all", "seed": 0},
            "stages": {"pairs": {"tokens": [f"tok{i}" for i in range(17)], "n": 4}}, "status": "done"}
    page = build(meta, nodes)
    assert len(nodes) > 790_000 and len(page) < 3_000_000
    assert len(_rows(page, "top-nodes-table")) == data.TOP_ROWS


def _browser(url: str, tmp_path: Path, *extra) -> tuple[str, str, set]:
    """(DOM after scripts ran, browser log, hosts the page's load contacted) for ``url``."""
    net = tmp_path / f"net{len(list(tmp_path.glob('net*')))}.json"
    proc = subprocess.run([CHROMIUM, *QUIET_BROWSER, "--enable-logging=stderr", "--v=0", f"--log-net-log={net}",
                           "--host-resolver-rules=MAP * ~NOTFOUND", *extra, "--dump-dom", url],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    urls = re.findall(r'"url":"([^"]+)"', net.read_text(errors="replace")) if net.exists() else []
    return proc.stdout, proc.stderr, {urlparse(u).netloc for u in urls if not u.startswith(("file:", "data:"))}


@needs_chromium
def test_report_in_a_headless_browser(folder, tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body></body></html>')
    _, _, background = _browser(blank.as_uri(), tmp_path)  # what the browser contacts by itself, page or not
    dom, log, hosts = _browser((folder / "report.html").as_uri() + "#sort=-effect_exact", tmp_path)
    console = [line for line in log.splitlines() if ":CONSOLE" in line]
    assert console == [], console  # no error, no warning, nothing logged by the page
    assert hosts <= background, hosts - background  # the report made no network request of its own
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom
    rows = _rows(dom, "top-nodes-table")
    assert len(rows) == data.TOP_ROWS
    header = re.findall(r'data-col="([^"]+)"', re.search(r'<table id="top-nodes-table".*?</thead>', dom, re.S).group(0))
    assert 'aria-sort="descending"' in dom  # the script ran: the address's #sort=-effect_exact sorted the table
    exact = [r[header.index("effect_exact")] for r in rows]
    verified = [float(v) for v in exact if v]
    assert verified == sorted(verified, reverse=True) and len(verified) > 10
    assert all(exact[: len(verified)]) and not any(exact[len(verified):])  # unverified (empty) rows last


@needs_chromium
def test_report_can_be_rebuilt_and_screenshotted(folder, tmp_path):
    (folder / "report.html").unlink()
    path = write_report(folder)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *QUIET_BROWSER, "--hide-scrollbars", "--window-size=1200,2000", f"--screenshot={shot}",
                    path.as_uri()], capture_output=True, timeout=300, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
