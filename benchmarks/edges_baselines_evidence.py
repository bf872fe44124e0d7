"""The paper's joint-patching baselines on edges (Subsampling, Blocks, Hierarchical; SPEC.md §8 with edges
as units) on the edge universe of ``benchmarks/edges_evidence.py``: every edge into its 21 readers on
SmolLM2-135M-Instruct, IOI, 4 pairs (4 851 edges, exact truth cached in ``edge_truth.npz``).

Each baseline ranks that universe (``edges=`` the universe: its patches only touch those edges) and its
cost of verified recall is computed against the exact truth with ``atpstar.recall_cost``; the AtP rows
of ``recall_cost.csv`` (same universe, same truth) are put beside them. Results are cached in
``baselines.npz`` (per method: score and effect of the universe edges, cost, seconds), so a rerun only
redraws the table and the figure.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/edges_baselines_evidence.py
    ... benchmarks/edges_baselines_evidence.py --quick --out /tmp/q   # after edges_evidence.py --quick --out /tmp/q
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar
from atpstar import edges as E

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import edges_evidence as ev  # noqa: E402

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
    done = {}
    if path.exists():
        with np.load(path) as d:
            done = {k: d[k] for k in d.files}
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


def curves(table: pd.DataFrame, edges: E.EdgeSet, graph, done: dict, atp: pd.DataFrame | None, k: int) -> pd.DataFrame:
    """Cost of verified recall (atpstar.recall_cost) of each baseline, oracle and the cached AtP curves."""
    truth = table[["name", "exact"]].rename(columns={"exact": "effect_exact"})
    rows = {"k": np.arange(1, k + 1), "oracle": np.arange(1, k + 1, dtype=float)}
    for label in METHODS:
        score = done[f"{label}_score"]
        order = np.lexsort((np.arange(len(score)), -np.nan_to_num(score, nan=-np.inf)))  # ties: universe order
        ranking = pd.DataFrame({"name": table["name"].to_numpy()[order], "score": score[order]})
        forward, n_pairs, _ = done[f"{label}_cost"]
        curve = atpstar.recall_cost(ranking, truth, k=k, estimation_cost=forward / n_pairs)
        rows[label] = curve["cost"].to_numpy(dtype=float)
        rows[label + " verified"] = curve["verified"].to_numpy()
    if atp is not None:
        for method in ("AtP", "AtP*"):
            rows[method] = atp[method].to_numpy()[:k]
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame, path: Path, n_edges: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for method in ["oracle", "AtP", "AtP*", *METHODS]:
        if method in frame:
            ax.plot(frame.k, frame[method], label=method, color=COLORS[method],
                    ls="--" if method in ("oracle", "AtP", "AtP*") else "-", lw=1.6 if method != "oracle" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("k (true top-k edges, by |mean exact effect|)")
    ax.set_ylabel("forward-pass equivalents per pair")
    ax.axhline(n_edges, color="lightgray", lw=0.8)
    ax.text(frame.k.iloc[-1], n_edges, f"all {n_edges} edges", fontsize=7, ha="right", va="bottom", color="gray")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
    ap.add_argument("--quick", action="store_true", help="on the results of edges_evidence.py --quick (tiny Llama)")
    ap.add_argument("--out", type=Path, default=None, help=f"results folder of edges_evidence.py (default {ev.OUT})")
    ap.add_argument("--k", type=int, default=100, help="largest k of the curves")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or (Path("/tmp/edges_evidence_quick") if args.quick else ev.OUT)
    figs = out / "figures" if args.quick else ev.FIGS
    setting = argparse.Namespace(quick=args.quick, pairs=None)
    model, pairs, _ = ev.setting(setting)
    graph = E.EdgeGraph.of(model)
    readers = pd.read_csv(out / "readers.csv")
    with np.load(out / "edge_truth.npz") as d:
        truth = {k: d[k] for k in d.files}
    table = ev.truth_table(graph, readers, truth, pairs.max_len)
    edges = ev.universe(graph, readers)
    done = stage_baselines(model, pairs, graph, edges, out, args.quick)
    atp = pd.read_csv(out / "recall_cost.csv") if (out / "recall_cost.csv").exists() else None
    frame = curves(table, edges, graph, done, atp, min(args.k, len(table)))
    frame.to_csv(out / "baselines_recall_cost.csv", index=False, float_format="%.6g")
    figs.mkdir(parents=True, exist_ok=True)
    plot(frame, figs / "baselines_recall_cost.png", len(table),
         f"{model.name}: joint-patching baselines on {len(table)} edges into {len(readers)} readers, {len(pairs)} pairs")
    print(markdown(frame, done))
    return frame


if __name__ == "__main__":
    main()
