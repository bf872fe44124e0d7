"""The false-negative diagnostic on edges, on SmolLM2 IOI (docs/edges.md, "The diagnostic on edges").

Edge AtP* over every edge of 4 IOI pairs → ``atpstar.verify`` of the top 30 → ``diagnose_edges`` over the
edges into the q/k/v readers of the top ``--heads`` reader heads of the edge ranking (every writer before
them, every position), AtP*'s edge estimates subtracted. Then the top suspect is patched exactly.
Prints one JSON line and writes it to ``--out`` (benchmarks/results/edges_diagnostic_smollm.json).

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.edges_diagnostic_smollm
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import atpstar
from atpstar.diagnostics import diagnose_edges
from atpstar.edges import EdgeSet, edge_acp
from atpstar.edges.graph import K, Q, V


def _per_pair(scores):
    """Edge AtP*'s forward-pass equivalents per pair (None when its backward passes were not timed)."""
    try:
        return atpstar.Cost.of(scores).per_pair()
    except ValueError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--p", type=float, default=0.05)
    ap.add_argument("--bound", default="capped")
    ap.add_argument("--out", default="benchmarks/results/edges_diagnostic_smollm.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = atpstar.load_model("default")
    pairs = atpstar.tasks.ioi(model, n=4, seed=0)
    t0 = time.perf_counter()
    scores = atpstar.edges.atp(model, pairs)
    t_atp = time.perf_counter() - t0
    t0 = time.perf_counter()
    v = atpstar.verify(model, pairs, scores, budget=atpstar.Budget(nodes=30))
    t_verify = time.perf_counter() - t0
    graph, n_pos = scores.graph, scores.n_pos
    # the reader heads (a kv group's q, k, v readers) carrying the most edge AtP* score
    kind, layer, unit = graph.reader_kind, graph.reader_layer, graph.reader_unit
    attn = (kind == Q) | (kind == K) | (kind == V)
    group = torch.where(kind == Q, unit // (graph.n_heads // graph.n_kv_heads), unit)
    per_reader = scores.score.nan_to_num().sum((0, 2))
    key = layer * graph.n_kv_heads + group
    totals = torch.zeros(int(key.max()) + 1, dtype=per_reader.dtype).index_add_(0, key[attn], per_reader[attn])
    chosen = totals.argsort(descending=True)[:args.heads]
    readers = attn & torch.isin(key, chosen)
    every = EdgeSet.every(graph, n_pos)
    universe = every.take(readers[every.reader])
    names = sorted({f"L{int(k) // graph.n_kv_heads}.G{int(k) % graph.n_kv_heads}" for k in chosen})
    t0 = time.perf_counter()
    d = diagnose_edges(model, pairs, v, estimates=scores, edges=universe, samples=args.samples, p=args.p,
                       bound=args.bound, progress=False)
    t_diag = time.perf_counter() - t0
    top = d.suspects.iloc[0]
    exact = float(edge_acp(model, pairs, [top["name"]]).effect.flatten().nan_to_num().abs().max())
    out = {
        "pairs": len(pairs), "tokens": n_pos, "heads": names, "universe": len(universe),
        "verified_in_universe": d.n_verified, "static": d.n_static, "sampled": len(d.nodes),
        "samples": args.samples, "p": args.p, "bound": args.bound, "delta": d.delta,
        "theta": d.theta, "theta_normal": d.theta_at(d.delta) if args.bound == "normal" else None,
        "largest_verified_abs": float(v.effect.abs().max()), "smallest_verified_abs": float(v.effect.abs().min()),
        "top_suspect": top["name"], "top_suspect_estimate": float(top["effect"]), "top_suspect_se": float(top["se"]),
        "top_suspect_exact": exact, "diagnostic_per_pair": d.cost.per_pair(), "diagnostic_seconds": t_diag,
        "atp_seconds": t_atp, "atp_per_pair": _per_pair(scores), "verify_seconds": t_verify,
        "verify_per_pair": v.cost.per_pair(), "statement": d.statement,
    }
    print(json.dumps(out, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
