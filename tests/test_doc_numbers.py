"""Numbers the docs quote are the cached results of the benchmark scripts that measured them: a rerun
that changes a result fails here until the docs are regenerated. No model: cached files only."""

import io
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_the_theta_stop_table_is_the_cached_paths():
    import theta_stop

    relatives = [0.1, 0.25, 0.5, 1.0]
    table = theta_stop.stops(theta_stop.paths(), relatives)
    assert theta_stop.markdown(table, relatives) in (ROOT / "docs" / "diagnostic.md").read_text()
    cached = pd.read_csv(ROOT / "benchmarks" / "results" / "theta_stop.csv")
    pd.testing.assert_frame_equal(pd.read_csv(io.StringIO(table.to_csv(index=False))), cached)
    # what the docs say of it: every stop was right, CITY stops at R = 0.25, IOI and RAND at no R ≤ 1
    assert table["covered_every_check"].all()
    stopped = table.dropna(subset=["K@0.25"])
    assert set(stopped["task"]) == {"city"} and stopped["right@0.25"].all()
    assert (table[table["task"] != "city"]["smallest_relative"] > 1).all()


def test_the_demo_numbers_quoted_are_the_cached_measurement():
    demo = json.loads((ROOT / "benchmarks" / "results" / "demo.json").read_text())
    costs = demo["costs"]
    seconds = costs["total"]["seconds"]
    quoted = [(f"{costs['total']['per_pair']:.0f} forward-pass equivalents per pair",),
              (f"{seconds:.0f} s of", f"{seconds:.1f} s of"), (f"{demo['wall_seconds']:.0f} s wall clock",)]
    for page in ("README.md", "docs/diagnostic.md", "docs/cli.md"):
        text = " ".join((ROOT / page).read_text().split())
        for alternatives in quoted:
            assert any(fragment in text for fragment in alternatives), (page, alternatives)
    theta = f"θ = {demo['diagnostic']['theta']:.4g}"
    assert any(theta in line for line in demo["printed"]) and theta in (ROOT / "README.md").read_text()


def test_the_demo_help_quotes_the_measured_time_and_the_readme_its_printed_summary():
    from atpstar.run.cli.parser import DEMO_TIME, build_parser

    demo = json.loads((ROOT / "benchmarks" / "results" / "demo.json").read_text())
    assert DEMO_TIME == f"about {demo['costs']['total']['seconds']:.0f} s of compute on a 2-core CPU"
    assert DEMO_TIME in build_parser()._subparsers._group_actions[0].choices["demo"].description
    readme = (ROOT / "README.md").read_text()
    output = readme[readme.index("The demo ends like this"):].split("```")[1]
    abridged = ("...", "report:", "diagnostic:", "diagnostic design:")  # shortened with [...], or a temporary path
    rows = [line for line in output.splitlines()[1:] if line.strip() and not line.startswith(abridged)]
    assert len(rows) >= 10 and all(row in demo["printed"] for row in rows), [r for r in rows if r not in demo["printed"]]
    assert any(line.startswith("diagnostic warning:") for line in rows) == bool(demo["diagnostic"].get("warning"))


def test_the_circuit_tables_are_the_cached_comparisons():
    """Every variant of the circuit comparison cached under docs/results is printed in circuits_evidence.md as the
    script prints it (with / without BOS, grouped / ungrouped key-value readers, held-out evaluation pairs)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks import circuits_compare as cc

    text = (ROOT / "docs" / "circuits_evidence.md").read_text()
    variants = [(True, False, False), (True, True, False), (True, False, True), (False, False, False)]
    for bos, ungroup, heldout in variants:
        table = cc.table(cc.cached(ROOT / cc.OUT[bos], bos, ungroup, heldout))
        assert table in text, (bos, ungroup, heldout)
