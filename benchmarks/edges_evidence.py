"""Evidence for edge AtP* on a real model: exact edge effects, the cost of verified recall of edge AtP /
+QKfix / +GradDrop / AtP* / random, the circuit figure, and the time and memory of edge AtP* against
node AtP*, a forward+backward and node patching.

Stages (each cached under ``--out``, so a rerun resumes where the last one stopped; the parts live in
:mod:`benchmarks.edgeslib`):

1. ``readers``: the true top attention nodes by |mean exact effect| from the cached node truth
   (``benchmarks/results/study/truth_ioi.npz``); each q/k/v node names one reader (its input) at its
   position; plus the ``logits`` reader at the final position.
2. ``truth``: every edge into those readers patched exactly on every pair (``EdgePatcher.single``),
   one reader at a time, saved after each reader (``edge_truth.npz``).
3. ``estimates``: edge AtP, AtP+QKfix, AtP+GradDrop, AtP* over every edge of the model; the scores of
   the universe's edges and the global top edges are kept (``edge_estimates.npz``).
4. ``timing``: one process per measurement (peak RSS is per process): plain forward+backward,
   node AtP* (``kinds="all"``), edge AtP* (every edge), edge patching and node patching per patch
   (``timing.json``).
5. ``report``: the recall-cost curves (``atpstar.recall_cost``; ``recall_cost.csv``, figure), the misses
   table, the circuit figure, ``summary.json``.

Usage (from the repository root)::

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.edges_evidence [--stage all]
    ... python -m benchmarks.edges_evidence --quick --out /tmp/edges_quick   # tiny random Llama, < 1 minute

``--quick`` runs the whole pipeline on a 3-layer random Llama with random prompt pairs (node truth
computed by ``acp`` on the spot) and writes everything, figures included, under ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import atpstar
from atpstar import edges as E
from benchmarks.edgeslib.curves import curves, misses, reader_sums
from benchmarks.edgeslib.figures import plot_circuit, plot_curves
from benchmarks.edgeslib.setting import (FIGS, OUT, choose_readers, folders, position_labels, setting,
                                         setting_lengths, universe)
from benchmarks.edgeslib.stages import stage_estimates, stage_truth, truth_table
from benchmarks.edgeslib.timing import child, stage_timing


def stage_report(model, pairs, graph, readers, table, done, est, timing, out: Path, figs: Path, k: int) -> dict:
    """Curves, misses, figures and ``summary.json`` from the cached stages."""
    ratio = timing.get("backward_ratio")
    if ratio is None:
        ratio = atpstar.measure_backward_ratio(model, pairs.clean[0][None], repeats=3)
        timing["backward_ratio"] = ratio
        (out / "timing.json").write_text(json.dumps(timing, indent=1))
    k = min(k, len(table))
    frame, estimation = curves(table, est, ratio, k)
    frame.to_csv(out / "recall_cost.csv", index=False, float_format="%.6g")
    miss = misses(table, est, min(20, len(table)), min(100, len(table) - 1))
    miss.to_csv(out / "misses.csv", index=False, float_format="%.6g")
    figs.mkdir(parents=True, exist_ok=True)
    plot_curves(frame, figs / "recall_cost.png", len(table),
                f"{model.name}: cost of verified recall over {len(table)} edges into {len(readers)} readers, "
                f"{len(pairs)} pairs")
    top = table.reindex(table.exact.abs().sort_values(ascending=False).index).head(25)
    plot_circuit(top, graph.n_heads // graph.n_kv_heads, figs / "circuit.png", position_labels(model, pairs),
                 f"{model.name}: the 25 largest verified edges (width = |mean exact effect|)")
    cut = min(100, len(table) - 1)
    missed = miss[miss.AtP_miss]
    summary = {
        "model": model.name, "pairs": len(pairs), "n_readers": len(readers), "n_edges": len(table),
        "backward_ratio": ratio, "estimation_per_pair": estimation,
        "cost_at": {str(kk): frame.loc[frame.k == kk, list(estimation)].iloc[0].to_dict()
                    for kk in (1, 5, 10, 20, 50, 100) if kk <= k},
        "atp_misses_top20_outside_top100": int(len(missed)),
        "recovered_by": {m: int((missed[m] <= cut).sum()) for m in ("AtP+QKfix", "AtP+GradDrop", "AtP*")},
        "n_model_edges": int(est["n_model_edges"]),
        "atp_misses_top20_outside_top100_of_all_edges": int(miss.AtP_miss_all_edges.sum()),
        "recovered_by_all_edges": {m: int((miss[miss.AtP_miss_all_edges][m + " (all edges)"] <= cut).sum())
                                   for m in ("AtP+QKfix", "AtP+GradDrop", "AtP*")},
        "readers": reader_sums(readers, table).to_dict("records"),
        "truth_seconds": float(sum(v[0] for kk, v in done.items() if kk.endswith("_seconds"))),
        "truth_patches": int(sum(v[1] for kk, v in done.items() if kk.endswith("_seconds"))),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    top.drop(columns=[c for c in top.columns if c.startswith("p") and c[1:].isdigit()]).to_csv(
        out / "top_edges.csv", index=False, float_format="%.6g")
    return summary


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, 2 random pairs (under a minute)")
    ap.add_argument("--stage", default="all", choices=["all", "truth", "estimates", "timing", "report"])
    ap.add_argument("--out", type=Path, default=None, help=f"results folder (default {OUT}; figures in {FIGS})")
    ap.add_argument("--readers", type=int, default=16, help="top q/k/v nodes taken as readers (plus logits)")
    ap.add_argument("--pairs", type=lambda s: [int(x) for x in s.split(",")], default=None, help="e.g. 0,1")
    ap.add_argument("--k", type=int, default=100, help="largest k of the recall-cost curves")
    ap.add_argument("--timing-pair", type=int, default=None, help="pair of the timing (default: the longest)")
    ap.add_argument("--patches", type=int, default=300, help="edges patched in the per-patch timing")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.readers = min(args.readers, 3)
        args.patches = min(args.patches, 40)
    if args.timing_pair is None:
        args.timing_pair = int(np.argmax(setting_lengths(args)))
    return args


def main(argv=None) -> dict | None:
    args = parse(argv)
    torch.set_num_threads(1)
    if args.measure:
        return child(args)
    out, figs = folders(args.quick, args.out)
    out.mkdir(parents=True, exist_ok=True)
    model, pairs, node_truth = setting(args)
    graph = E.EdgeGraph.of(model)
    readers = choose_readers(graph, node_truth, args.readers, pairs.max_len)
    readers.to_csv(out / "readers.csv", index=False, float_format="%.6g")
    stages = ["truth", "estimates", "timing", "report"] if args.stage == "all" else [args.stage]
    if "truth" in stages or "report" in stages:
        done = stage_truth(model, pairs, graph, readers, out)
        table = truth_table(graph, readers, done, pairs.max_len)
    if "estimates" in stages or "report" in stages:
        ids = universe(graph, readers).ids(graph, pairs.max_len).numpy()
        est = stage_estimates(model, pairs, graph, ids, out)
    timing = stage_timing(args, out, model, pairs, node_truth) if ("timing" in stages) else (
        json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {})
    if "report" in stages:
        summary = stage_report(model, pairs, graph, readers, table, done, est, timing, out, figs, args.k)
        print(json.dumps(summary, indent=1, default=float))
        return summary


if __name__ == "__main__":
    main()
