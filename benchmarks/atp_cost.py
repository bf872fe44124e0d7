"""Cost of AtP, AtP+QKfix, AtP+GradDrop and AtP* per prompt pair on SmolLM2-135M (all node kinds).

Each variant runs in its own process so that peak memory (max RSS above the loaded model) is its
own. Times are reported in seconds, as multiples of one forward pass and of one full backward
pass, and against exhaustive activation patching of the same nodes (extrapolated from a measured
batched rate). Run: ``python benchmarks/atp_cost.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

import atpstar
from acp_throughput import workloads  # same folder
from atpstar.substrate.capture import Intervention, run
from atpstar.methods.atp import method_name
from atpstar.types import ALL_KINDS

VARIANTS = [(False, False), (True, False), (False, True), (True, True)]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(threads: int):
    torch.set_num_threads(threads)
    model = atpstar.load_model("default")
    return model, atpstar.tasks.ioi(model, n=1, seed=0)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def child(args) -> None:
    """Measure one variant (or the base passes) in this process and print JSON."""
    model, pairs = setup(args.threads)
    ids = pairs.clean[0][None]
    base = rss_mb()
    if args.variant == "base":
        metric = atpstar.metrics.resolve(None, pairs)
        fwd = best_of(lambda: run(model, ids), args.repeat)

        def fwd_bwd():
            hooks = Intervention(model, grad=True)
            with torch.enable_grad():
                metric(run(model, ids, hooks), pairs).sum().backward()

        out = {"forward": fwd, "backward": best_of(fwd_bwd, args.repeat) - fwd}
        nodes = atpstar.NodeSet.every(model, "all", pairs.max_len)
        sample = workloads(model, pairs.max_len)["neuron (16 per layer x position)"]  # dense, as exhaustive runs are
        start = time.perf_counter()
        atpstar.acp(model, pairs, nodes=sample, progress=False)
        out["acp_per_node"] = (time.perf_counter() - start) / len(sample)
        out["n_nodes"] = len(nodes)
    else:
        qk, gd = VARIANTS[int(args.variant)]
        run_it = lambda: atpstar.atp(model, pairs, kinds="all", qk_fix=qk, graddrop=gd, progress=False)  # noqa: E731
        run_it()
        out = {"time": best_of(run_it, args.repeat)}
    out["peak_mb"] = rss_mb() - base
    print(json.dumps(out))


def measure(variant: str, threads: int, repeat: int) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--threads", str(threads), "--repeat", str(repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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
