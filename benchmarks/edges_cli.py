"""The edge diagnostic from the command line on SmolLM2: every edge against a bounded ``--edge-universe``.

Runs ``atpstar run --task ioi --pairs 2 --level edges`` with each configuration below in a fresh process
(one thread), and records its wall time, peak resident memory (the child's own), θ, the largest
verified |effect|, the unverified edges bounded and the diagnostic's seconds and cost, in
benchmarks/results/edges_cli.json (the table of docs/edges.md).

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.edges_cli [--only "NAME;..."]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks.isolated import ROOT, run_command

RESULT = ROOT / "benchmarks" / "results" / "edges_cli.json"
BASE = ["--model", "default", "--task", "ioi", "--pairs", "2", "--no-bos", "--level", "edges", "--quiet"]
"""The cached table was measured before prompts got the BOS token by default: --no-bos reproduces it."""
RUNS = {
    "every edge, --diagnose": ["--verify-budget", "30edges", "--diagnose", "--samples", "100", "--p", "0.2"],
    "readers:6, --diagnose": ["--verify-budget", "30edges", "--diagnose", "--edge-universe", "readers:6",
                              "--samples", "300", "--p", "0.05"],
    "top:20000, --diagnose": ["--verify-budget", "30edges", "--diagnose", "--edge-universe", "top:20000",
                              "--samples", "600", "--p", "0.05"],
    "top:20000, --stop theta": ["--stop", "theta:relative=0.2", "--edge-universe", "top:20000",
                                "--verify-budget", "200edges", "--samples", "600", "--p", "0.05"],
}


def run_one(name: str, options: list[str], tmp: Path) -> dict:
    folder = tmp / name.replace(" ", "_").replace(",", "").replace(":", "")
    child = run_command([sys.executable, "-m", "atpstar", "run", *BASE, *options, "--out", str(folder)],
                        env={"OMP_NUM_THREADS": "1"})
    if child.returncode:
        raise SystemExit(f"{name}: atpstar run failed: {child.stderr[-2000:]}")
    meta = json.loads((folder / "run.json").read_text())
    diag = json.loads((folder / "stages" / "edge-diagnosis.json").read_text())
    verified = pd_abs_max(folder / "stages" / "verified-edges.parquet")
    return {"options": options, "wall_seconds": round(child.seconds, 1),
            "peak_rss_gb": round(child.peak_gb, 2),
            "theta": diag.get("theta"), "largest_verified_abs": verified,
            "edge_universe": diag.get("edge_universe"), "unverified": diag.get("n_unverified") or diag.get("n_nodes"),
            "samples": diag.get("samples"), "p": diag.get("p"), "costs": meta.get("costs"),
            "theta_history": [h.get("theta") for h in diag.get("theta_history", [])][:1]
            + [h.get("theta") for h in diag.get("theta_history", [])][-1:],
            "stopped": meta.get("stages", {}).get("verify-edges", {}).get("stopped"),
            "load_1min": os.getloadavg()[0]}


def pd_abs_max(path: Path) -> float | None:
    import pandas as pd

    if not path.exists():
        return None
    table = pd.read_parquet(path)
    return float(table["effect_exact"].abs().max()) if len(table) else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="semicolon-separated names of RUNS (default: all)")
    args = parser.parse_args(argv)
    names = [n for n in RUNS if not args.only or n in args.only.split(";")]
    results = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    results["machine"] = {"cores": os.cpu_count(), "threads": 1}
    with tempfile.TemporaryDirectory(prefix="atpstar-edges-cli-") as tmp:
        for name in names:
            results[name] = run_one(name, RUNS[name], Path(tmp))
            RESULT.write_text(json.dumps(results, indent=1, default=str) + "\n")
            print(name, {k: results[name][k] for k in ("wall_seconds", "peak_rss_gb", "theta", "largest_verified_abs")})
    return results


if __name__ == "__main__":
    main()
