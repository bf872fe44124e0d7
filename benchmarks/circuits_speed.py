"""Speed of circuit evaluation and of the field's edge methods, SmolLM2-135M, IOI, 8 pairs, one thread.

Prints (and caches in benchmarks/results/circuits_speed.json):

- a plain forward pass over the 8 clean prompts (the unit);
- one MIB curve (10 circuits, the signed ranking of EAP scores) and both curves (20 circuits: what CPR and
  CMD need), in seconds and in forward passes per pair per circuit, after the clean and noise reference runs;
- EAP (= plain edge AtP), atpstar's plain edge AtP, EAP-IG-inputs at 5 steps (MIB's setting): its time over
  5 × EAP's, and with ``--activations`` EAP-IG-activations at 5 steps;
- circuit IG at 20 steps: its time per step in plain forward passes per pair (a step is a forward and a
  backward pass of the mixed run and the edges' gradients), and over EAP-IG-inputs' time.

Times are this process's CPU seconds (one thread), so a machine shared with other work still measures the
work itself. Run: ``python -m benchmarks.circuits_speed [--pairs 8] [--activations] [--cached]``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from atpstar.circuits import circuit_ig, curve, mib
from atpstar.edges import atp
from atpstar.edges.eap_ig import eap, eap_ig_activations, eap_ig_inputs
from atpstar.substrate.capture import run
from benchmarks.cached import cached_main, smollm_ioi

CACHE = Path(__file__).parent / "results" / "circuits_speed.json"


def timed(fn, repeat: int = 1, what: str = ""):
    """(result of the last call, least CPU seconds of ``repeat`` calls): this process's CPU time, so that other
    programs on a shared machine do not count (one thread: the wall time of an idle machine)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        out = fn()
        best = min(best, time.process_time() - start)
    if what:
        print(f"{what}: {best:.1f} CPU s", flush=True)
    return out, best


def forward(model, pairs) -> None:
    with torch.no_grad():
        for group in pairs.groups():
            run(model, group.clean)


def measure(n_pairs: int, with_activations: bool) -> dict:
    model, pairs, graph = smollm_ioi(n_pairs)
    _, t_forward = timed(lambda: forward(model, pairs), repeat=3, what="forward")
    scores, t_eap = timed(lambda: eap(model, pairs), what="EAP")
    _, t_atp = timed(lambda: atp(model, pairs, qk_fix=False, graddrop=False), what="edge AtP")
    _, t_ig = timed(lambda: eap_ig_inputs(model, pairs, ig_steps=5), what="EAP-IG-inputs")
    t_act = timed(lambda: eap_ig_activations(model, pairs, ig_steps=5), what="EAP-IG-activations")[1] if with_activations else None
    _, t_cig = timed(lambda: circuit_ig(model, pairs, ig_steps=20), what="circuit IG")
    one, t_curve = timed(lambda: curve(model, pairs, scores, absolute=False), what="one curve")
    both, t_mib = timed(lambda: mib(model, pairs, scores), what="both curves")
    per = lambda seconds, n: (seconds - 2 * t_forward) / (n * t_forward)  # noqa: E731 - after clean + noise runs
    return {"model": model.name, "pairs": len(pairs), "edges": graph.n_edges(), "threads": 1,
            "forward_s": t_forward, "eap_s": t_eap, "atp_plain_s": t_atp, "eap_ig_inputs_5_s": t_ig,
            "eap_ig_activations_5_s": t_act, "ig_over_5_eap": t_ig / (5 * t_eap),
            "circuit_ig_20_s": t_cig, "circuit_ig_step_forward_per_pair": (t_cig - t_forward) / (20 * t_forward),
            "circuit_ig_over_eap_ig_inputs": t_cig / t_ig,
            "curve_10_s": t_curve, "curve_10_forward_per_pair_circuit": per(t_curve, 10),
            "mib_20_s": t_mib, "mib_20_forward_per_pair_circuit": per(t_mib, 20),
            "cpr_eap": both.cpr, "cmd_eap": both.cmd, "curve_f": one.f}


def table(r: dict) -> str:
    rows = [
        ("plain forward pass, all pairs", f"{r['forward_s']:.2f} s", "1 (the unit)"),
        ("MIB curve, 10 circuits", f"{r['curve_10_s']:.1f} s",
         f"{r['curve_10_forward_per_pair_circuit']:.2f} forward passes per pair per circuit"),
        ("CPR + CMD curves, 20 circuits", f"{r['mib_20_s']:.1f} s",
         f"{r['mib_20_forward_per_pair_circuit']:.2f} forward passes per pair per circuit"),
        ("EAP (plain edge AtP)", f"{r['eap_s']:.1f} s", ""),
        ("atpstar edge AtP, no QK fix / GradDrop", f"{r['atp_plain_s']:.1f} s", ""),
        ("EAP-IG-inputs, 5 steps", f"{r['eap_ig_inputs_5_s']:.1f} s", f"{r['ig_over_5_eap']:.2f} × (5 × EAP)"),
    ]
    if "circuit_ig_20_s" in r:
        rows.append(("circuit IG, 20 steps", f"{r['circuit_ig_20_s']:.1f} s",
                     f"{r['circuit_ig_step_forward_per_pair']:.1f} forward passes per pair per step; "
                     f"{r['circuit_ig_over_eap_ig_inputs']:.1f} × EAP-IG-inputs"))
    if r["eap_ig_activations_5_s"] is not None:
        rows.append(("EAP-IG-activations, 5 steps", f"{r['eap_ig_activations_5_s']:.1f} s", ""))
    head = f"{r['model']}, IOI, {r['pairs']} pairs, {r['edges']} edges, {r['threads']} thread, CPU seconds"
    lines = [head, f"| {'what':<40} | {'CPU time':>8} | relative |", f"|{'-' * 42}|{'-' * 10}|----------|"]
    lines += [f"| {a:<40} | {b:>8} | {c} |" for a, b, c in rows]
    lines.append(f"EAP's CPR {r['cpr_eap']:.3f}, CMD {r['cmd_eap']:.3f}")
    return "\n".join(lines)


def main() -> None:
    cached_main(__doc__, CACHE, measure, table, "also EAP-IG-activations (5 × (1 + 2L) passes per pair)")


if __name__ == "__main__":
    main()
