"""Circuits of edge rankings scored with MIB's circuit-track yardstick: SmolLM2-135M, IOI, one thread.

For each method — atpstar's AtP (plain edge AtP, which is EAP at atpstar's grouped key-value granularity),
AtP* (QK fix + GradDrop), EAP-IG-inputs (5 steps, as MIB), circuit IG (20 steps), optionally
EAP-IG-activations (5 steps), and random scores — the edge scores' cost (forward + backward passes per pair,
seconds) and MIB's CPR (area under the faithfulness curve of the signed ranking) and CMD (area under |1 − f| of
the absolute ranking), with the smallest top-n circuits reaching f ≥ 0.8 and 0.9 (absolute ranking). Quick settings: 8 pairs by default.
Caches benchmarks/results/circuits.json; prints a markdown table. Times are this process's CPU seconds.

Run: ``python -m benchmarks.circuits [--pairs 8] [--activations] [--cached]``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from atpstar.circuits import circuit_ig, mib, smallest
from atpstar.edges import atp
from atpstar.edges.eap_ig import eap, eap_ig_activations, eap_ig_inputs
from benchmarks.cached import cached_main, smollm_ioi

CACHE = Path(__file__).parent / "results" / "circuits.json"


def methods(with_activations: bool) -> dict:
    out = {
        "AtP (= EAP, grouped k/v)": lambda m, p: eap(m, p),
        "AtP* (QK fix + GradDrop)": lambda m, p: atp(m, p),
        "EAP-IG-inputs (5 steps)": lambda m, p: eap_ig_inputs(m, p, ig_steps=5),
        "circuit IG (20 steps)": lambda m, p: circuit_ig(m, p, ig_steps=20),
    }
    if with_activations:
        out["EAP-IG-activations (5 steps)"] = lambda m, p: eap_ig_activations(m, p, ig_steps=5)
    return out


def measure(n_pairs: int, with_activations: bool) -> dict:
    model, pairs, graph = smollm_ioi(n_pairs)
    rows = []
    for name, method in methods(with_activations).items():
        start = time.process_time()
        scores = method(model, pairs)
        seconds = time.process_time() - start
        cost = scores.info["cost"]
        rows.append(score(model, pairs, graph, name, scores, seconds, cost.forward / len(pairs), cost.backward / len(pairs)))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(graph.shape, generator=gen, dtype=torch.float64).masked_fill(~graph.valid, torch.nan)
    rows.append(score(model, pairs, graph, "random scores", noise, 0.0, 0.0, 0.0))
    return {"model": model.name, "task": "ioi", "pairs": len(pairs), "edges": graph.n_edges(), "rows": rows}


def score(model, pairs, graph, name, scores, seconds, forward, backward) -> dict:
    start = time.process_time()
    result = mib(model, pairs, scores, graph=graph)
    found = smallest(model, pairs, scores, (0.8, 0.9), graph=graph, grid_curve=result.absolute)
    print(f"{name}: CPR {result.cpr:.3f}, CMD {result.cmd:.3f} ({time.process_time() - start:.0f} s to score)", flush=True)
    return {"method": name, "cpr": result.cpr, "cmd": result.cmd, "seconds": seconds, "forward_per_pair": forward,
            "backward_per_pair": backward, "f_signed": result.signed.f, "f_absolute": result.absolute.f,
            "smallest": [s.to_dict() for s in found]}


def table(r: dict) -> str:
    head = f"{r['model']}, {r['task']}, {r['pairs']} pairs, {r['edges']} edges (grouped k/v readers), BOS in front"
    lines = [f"{head}, 1 thread",
             "", "| method | CPR ↑ | CMD ↓ | edges for f ≥ 0.8 | edges for f ≥ 0.9 | passes per pair (fwd + bwd) | time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        small = [f"{s['kept']}" if s["n"] is not None else "—" for s in row["smallest"]]
        passes = f"{row['forward_per_pair']:.0f} + {row['backward_per_pair']:.0f}" if row["seconds"] else "—"
        when = f"{row['seconds']:.1f} s" if row["seconds"] else "—"
        lines.append(f"| {row['method']} | {row['cpr']:.3f} | {row['cmd']:.3f} | {small[0]} | {small[1]} | {passes} | {when} |")
    return "\n".join(lines)


def main() -> None:
    cached_main(__doc__, CACHE, measure, table, "also EAP-IG-activations (slow: 5 × (1 + 2L) passes)")


if __name__ == "__main__":
    main()
