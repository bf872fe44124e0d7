"""The paper's joint-patching baselines on edges (Subsampling, Blocks, Hierarchical, with edges as the
units they group) on the edge universe of ``benchmarks.edges_evidence``: every edge into its 21 readers on
SmolLM2-135M-Instruct, IOI, 4 pairs (4 851 edges, exact truth cached in ``edge_truth.npz``).

Each baseline ranks that universe (``edges=`` the universe: its patches only touch those edges) and its
cost of verified recall is computed against the exact truth with ``atpstar.recall_cost``; the AtP rows
of ``recall_cost.csv`` (same universe, same truth) are put beside them. Results are cached in
``baselines.npz`` (per method: score and effect of the universe edges, cost, seconds), so a rerun only
redraws the table and the figure.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.edges_baselines_evidence
    ... python -m benchmarks.edges_baselines_evidence --quick --out /tmp/q   # after edges_evidence --quick --out /tmp/q
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from atpstar import edges as E
from benchmarks.edgeslib.curves import ranks_of, recall
from benchmarks.edgeslib.figures import recall_axis
from benchmarks.edgeslib.setting import folders, setting, universe
from benchmarks.edgeslib.stages import load_cache, truth_table
from benchmarks.plotting import pyplot, save

METHODS = {  # the node study's settings (benchmarks/studylib/rankings.py: attention nodes) where they apply
    "Subsampling": ("subsampling", {"p": 0.02, "samples": 500}),
    "Blocks": ("blocks", {"size": 16}),
    "Hierarchical": ("hierarchical", {}),
    "Hierarchical b8": ("hierarchical", {"branching": 8, "threshold": 0.05}),  # the node study's setting
}
QUICK = {"Subsampling": {"p": 0.1, "samples": 40}}
COLORS = {"Subsampling": "tab:purple", "Blocks": "tab:brown", "Hierarchical": "tab:olive", "AtP": "tab:blue",
          "AtP*": "tab:red", "oracle": "black", "Hierarchical b8": "tab:cyan"}
KS = (1, 5, 10, 20, 30, 36, 50, 100)


def stage_baselines(model, pairs, graph, edges: E.EdgeSet, out: Path, quick: bool) -> dict:
    """Each baseline's score/effect on the universe edges (in ``edges`` order), cost and seconds, cached."""
    path = out / "baselines.npz"
    done = load_cache(path)
    ids = edges.ids(graph, pairs.max_len)
    for label, (name, options) in METHODS.items():
        if f"{label}_score" in done:
            continue
        options = {**options, **(QUICK.get(label, {}) if quick else {})}
        t0 = time.perf_counter()
        got = E.EDGE_BASELINES[name](model, pairs, edges=edges, graph=graph, progress=not quick, **options)
        seconds = time.perf_counter() - t0
        cost = got.info["cost"]
        done[f"{label}_score"] = got.score.flatten()[ids].numpy()
        done[f"{label}_effect"] = got.effect.flatten()[ids].numpy()
        done[f"{label}_cost"] = np.array([cost.forward, cost.pairs, seconds])
        info = {k: v for k, v in got.info.items() if k not in ("cost", "metric")}
        done[f"{label}_info"] = np.array(json.dumps({**options, **info}, default=str))
        print(f"[baselines] {label} {options}: {seconds:.1f}s, {cost.forward / cost.pairs:.1f} forward-pass "
              f"equivalents per pair", flush=True)
        np.savez_compressed(path, **done)
    return done


def curves(table: pd.DataFrame, done: dict, atp: pd.DataFrame | None, k: int) -> pd.DataFrame:
    """Cost of verified recall (atpstar.recall_cost) of each baseline, oracle and the cached AtP curves."""
    rows = {"k": np.arange(1, k + 1), "oracle": np.arange(1, k + 1, dtype=float)}
    for label in METHODS:
        forward, n_pairs, _ = done[f"{label}_cost"]
        curve = recall(table, ranks_of(done[f"{label}_score"]), k, forward / n_pairs)  # ties: universe order
        rows[label] = curve["cost"].to_numpy(dtype=float)
        rows[label + " verified"] = curve["verified"].to_numpy()
    if atp is not None:
        for method in ("AtP", "AtP*"):
            rows[method] = atp[method].to_numpy()[:k]
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame, path: Path, n_edges: int, title: str) -> None:
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    for method in ["oracle", "AtP", "AtP*", *METHODS]:
        if method in frame:
            ax.plot(frame.k, frame[method], label=method, color=COLORS[method],
                    ls="--" if method in ("oracle", "AtP", "AtP*") else "-", lw=1.6 if method != "oracle" else 1)
    recall_axis(ax, frame, n_edges)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    save(fig, path)


def markdown(frame: pd.DataFrame, done: dict) -> str:
    cols = [c for c in ("oracle", "AtP", "AtP*", *METHODS) if c in frame]
    lines = ["| k | " + " | ".join(cols) + " | verified: " + " | ".join(METHODS) + " |",
             "|---" * (1 + len(cols) + len(METHODS)) + "|"]
    for kk in KS:
        if kk <= len(frame):
            row = frame.iloc[kk - 1]
            lines.append(f"| {kk} | " + " | ".join(f"{row[c]:.1f}" if c != "oracle" else f"{int(row[c])}" for c in cols)
                         + " | " + " | ".join(str(int(row[m + ' verified'])) for m in METHODS) + " |")
    costs = ["", "| method | options | estimation (forward-pass equivalents per pair) | wall-clock (all pairs, one thread) | notes |",
             "|---|---|---|---|---|"]
    for label in METHODS:
        forward, n_pairs, seconds = done[f"{label}_cost"]
        info = json.loads(str(done[f"{label}_info"]))
        notes = {"subsampling": f"unestimated {info.get('unestimated')}", "blocks": f"{info.get('blocks')} blocks",
                 "hierarchical": f"groups per level {info.get('groups')}, {info.get('leaves')} leaves"}[METHODS[label][0]]
        opts = {k: info[k] for k in ("p", "samples", "size", "order", "branching", "threshold", "relative") if k in info}
        costs.append(f"| {label} | {opts} | {forward / n_pairs:.1f} | {seconds:.0f} s | {notes} |")
    return "\n".join(lines + costs)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="on the results of benchmarks.edges_evidence --quick (tiny Llama)")
    ap.add_argument("--out", type=Path, default=None, help="results folder of benchmarks.edges_evidence (default: its own)")
    ap.add_argument("--k", type=int, default=100, help="largest k of the curves")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out, figs = folders(args.quick, args.out)
    model, pairs, _ = setting(argparse.Namespace(quick=args.quick, pairs=None))
    graph = E.EdgeGraph.of(model)
    readers = pd.read_csv(out / "readers.csv")
    truth = load_cache(out / "edge_truth.npz")
    table = truth_table(graph, readers, truth, pairs.max_len)
    edges = universe(graph, readers)
    done = stage_baselines(model, pairs, graph, edges, out, args.quick)
    atp = pd.read_csv(out / "recall_cost.csv") if (out / "recall_cost.csv").exists() else None
    frame = curves(table, done, atp, min(args.k, len(table)))
    frame.to_csv(out / "baselines_recall_cost.csv", index=False, float_format="%.6g")
    figs.mkdir(parents=True, exist_ok=True)
    plot(frame, figs / "baselines_recall_cost.png", len(table),
         f"{model.name}: joint-patching baselines on {len(table)} edges into {len(readers)} readers, {len(pairs)} pairs")
    print(markdown(frame, done))
    return frame


if __name__ == "__main__":
    main()
