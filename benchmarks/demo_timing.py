"""`atpstar demo`, timed once, and its report's screenshot: the numbers the README, docs/cli.md and
docs/diagnostic.md quote about the demo.

Runs the demo as a user does (a fresh process: start-up and model loading included) into a temporary
folder, reads its run.json (each stage's seconds and forward-pass equivalents per pair, the diagnostic's
θ) and its printed summary, screenshots report.html with a headless chromium (if there is one) into
docs/report.png, and writes everything, with the machine and its load, to benchmarks/results/demo.json.

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.demo_timing [--no-screenshot]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.isolated import ROOT, run_command

RESULT = ROOT / "benchmarks" / "results" / "demo.json"
SHOT = ROOT / "docs" / "report.png"
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,2200"]


def machine() -> dict:
    """What the timing ran on: CPU model, cores, threads allowed, and the load when it started."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_1min": os.getloadavg()[0], "python": platform.python_version()}


def run_demo(folder: Path) -> tuple[float, str, dict]:
    """The demo in a fresh process: wall seconds, what it printed, and its run.json."""
    done = run_command([sys.executable, "-m", "atpstar", "demo", "--out", str(folder)])
    if done.returncode:
        raise SystemExit(f"atpstar demo failed: {done.stderr[-2000:]}")
    return done.seconds, done.stdout, json.loads((folder / "run.json").read_text())


def screenshot(report: Path) -> bool:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if browser is None:
        print("no chromium here: docs/report.png left as it is")
        return False
    shot = run_command([browser, *BROWSER_FLAGS, f"--screenshot={SHOT}", report.as_uri()])
    if shot.returncode:
        raise SystemExit(f"{browser} failed: {shot.stderr[-2000:]}")
    return True


def summary(printed: str) -> list[str]:
    """The demo's closing summary as printed (from its table of top nodes to the report's path), which the
    README quotes."""
    lines = printed.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("top ")), default=max(0, len(lines) - 8))
    return lines[start:]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-screenshot", action="store_true", help="leave docs/report.png as it is")
    args = parser.parse_args(argv)
    facts = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="atpstar-demo-timing-") as tmp:
        folder = Path(tmp) / "demo"
        wall, printed, meta = run_demo(folder)
        facts["machine"]["load_1min_after"] = os.getloadavg()[0]
        facts.update(wall_seconds=round(wall, 1), costs=meta.get("costs"), options=meta.get("options"),
                     diagnostic=(meta.get("stages", {}).get("diagnose") or meta.get("stages", {}).get("verify")),
                     printed=summary(printed))
        if not args.no_screenshot:
            facts["screenshot"] = screenshot(folder / "report.html")
    RESULT.write_text(json.dumps(facts, indent=1, default=str) + "\n")
    print(json.dumps({k: facts[k] for k in ("machine", "wall_seconds", "costs")}, indent=1, default=str))
    print("\n".join(facts["printed"]))
    return facts


if __name__ == "__main__":
    main()
