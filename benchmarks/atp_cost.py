"""Cost of AtP, AtP+QKfix, AtP+GradDrop and AtP* per prompt pair on SmolLM2-135M (all node kinds).

Each variant runs in its own process so that peak memory (peak RSS above the loaded model) is its
own. Times are reported in seconds, as multiples of one forward pass and of one full backward
pass, and against exhaustive activation patching of the same nodes (extrapolated from a measured
batched rate). Run: ``python -m benchmarks.atp_cost``.
"""

from __future__ import annotations

import argparse
import time

import torch

import atpstar
from atpstar.methods.atp import method_name
from atpstar.substrate.capture import Intervention, run
from benchmarks.acp_throughput import workloads
from benchmarks.isolated import answer, best_of, peak_of, run_child

VARIANTS = [(False, False), (True, False), (False, True), (True, True)]


def setup(threads: int):
    torch.set_num_threads(threads)
    model = atpstar.load_model("default")
    return model, atpstar.tasks.ioi(model, n=1, seed=0)


def child(args) -> None:
    """Measure one variant (or the base passes) in this process and answer with its JSON."""
    model, pairs = setup(args.threads)
    if args.variant == "base":
        work = lambda: base_passes(model, pairs, args.repeat)  # noqa: E731
    else:
        work = lambda: variant_time(model, pairs, *VARIANTS[int(args.variant)], args.repeat)  # noqa: E731
    out, _, peak = peak_of(work)
    answer({**out, "peak_mb": peak.growth_mb})


def base_passes(model, pairs, repeat: int) -> dict:
    """Forward and backward times, and the batched exact patching rate per node (dense neurons)."""
    ids = pairs.clean[0][None]
    metric = atpstar.metrics.resolve(None, pairs)
    fwd = best_of(lambda: run(model, ids), repeat)

    def fwd_bwd():
        hooks = Intervention(model, grad=True)
        with torch.enable_grad():
            metric(run(model, ids, hooks), pairs).sum().backward()

    out = {"forward": fwd, "backward": best_of(fwd_bwd, repeat) - fwd}
    nodes = atpstar.NodeSet.every(model, "all", pairs.max_len)
    sample = workloads(model, pairs.max_len)["neuron (16 per layer x position)"]  # dense, as exhaustive runs are
    start = time.perf_counter()
    atpstar.acp(model, pairs, nodes=sample, progress=False)
    out["acp_per_node"] = (time.perf_counter() - start) / len(sample)
    out["n_nodes"] = len(nodes)
    return out


def variant_time(model, pairs, qk: bool, gd: bool, repeat: int) -> dict:
    run_it = lambda: atpstar.atp(model, pairs, kinds="all", qk_fix=qk, graddrop=gd, progress=False)  # noqa: E731
    run_it()
    return {"time": best_of(run_it, repeat)}


def measure(variant: str, threads: int, repeat: int) -> dict:
    return run_child("benchmarks.atp_cost", ["--child", variant, "--threads", threads, "--repeat", repeat], threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", dest="variant", default=None)
    args = parser.parse_args()
    if args.variant is not None:
        return child(args)
    base = measure("base", args.threads, args.repeat)
    fwd, bwd = base["forward"], base["backward"]
    acp_total = base["acp_per_node"] * base["n_nodes"]
    print(f"SmolLM2-135M-Instruct (30 layers), one IOI pair of 14 tokens, all node kinds "
          f"({base['n_nodes']:,} nodes), torch threads: {args.threads}, best of {args.repeat}\n")
    print(f"one forward: {fwd * 1000:.0f} ms; one full backward: {bwd * 1000:.0f} ms "
          f"(backward/forward = {bwd / fwd:.2f}); exhaustive activation patching of all nodes: "
          f"{acp_total / 3600:.1f} h (extrapolated from {base['acp_per_node'] * 1000:.0f} ms/node, batched, dense neurons)\n")
    print("| method | time / pair | × forward | × exhaustive AcP | extra peak RSS |\n|---|---|---|---|---|")
    times = {}
    for i, (qk, gd) in enumerate(VARIANTS):
        got = measure(str(i), args.threads, args.repeat)
        times[(qk, gd)] = got["time"]
        print(f"| {method_name(qk, gd)} | {got['time']:.2f} s | {got['time'] / fwd:.1f} | "
              f"{got['time'] / acp_total:.2e} | {got['peak_mb']:.0f} MB |")
    extra = times[(False, True)] - times[(False, False)]
    print(f"\nGradDrop's extra time: {extra:.2f} s = {extra / bwd:.1f} full backward passes "
          f"(target ≤ L/2 + 1 = 16; naive: L = 30)")


if __name__ == "__main__":
    main()
