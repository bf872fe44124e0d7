"""Exact activation patching throughput on SmolLM2-135M for one IOI pair.

Prints: nodes of each kind, unpatched forward passes per second, and single-node patches per second
batched (atpstar.acp: many patches per forward, blocks below the lowest patched layer skipped) vs
one patch per forward pass (the naive loop). Run: ``python benchmarks/acp_throughput.py``.
"""

from __future__ import annotations

import argparse
import time

import torch

import atpstar
from atpstar.capture import Intervention, Patch, node_index, run
from atpstar.types import ALL_KINDS


def timed(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def one_per_forward(model, pairs, nodes) -> float:
    """Seconds per patch of the naive loop: one full forward pass per single-node patch."""
    ids, noise_ids = pairs.clean[0][None], pairs.noise[0][None]
    noise = Intervention(model, capture=frozenset(k.value for k in ALL_KINDS))
    run(model, noise_ids, noise)
    one = torch.tensor([0])

    def loop():
        for node in nodes:
            unit, pos = torch.tensor([node.unit]), torch.tensor([node.pos])
            value = noise.cache[(node.layer, node.kind.value)][node_index(node.kind, one, unit, pos)]
            run(model, ids, Intervention(model, patches={(node.layer, node.kind): Patch(one, unit, pos, value)}))

    return timed(loop) / len(nodes)


def workloads(model, n_tok: int) -> dict:
    """Dense node sets, as exhaustive runs are: every head output; 16 neurons in every (layer, position)."""
    heads = atpstar.NodeSet.every(model, "head", n_tok)
    neurons = atpstar.NodeSet.every(model, "neuron", n_tok)
    return {"head (all 3,780)": heads, "neuron (16 per layer x position)": neurons.take(neurons.unit % 96 == 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--naive", type=int, default=60, help="patches timed in the one-per-forward loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = atpstar.load_model("default")
    pairs = atpstar.tasks.ioi(model, n=1, seed=0)
    n_tok = pairs.max_len
    print(f"{model.describe()}; one IOI pair of {n_tok} tokens; torch threads: {args.threads}\n")
    print("| node kind | nodes (all layers, units, positions) |\n|---|---|")
    for kind in ALL_KINDS:
        print(f"| {kind.value} | {model.n_nodes(kind, n_tok):,} |")
    with torch.no_grad():
        fwd = timed(lambda: run(model, pairs.clean[0][None]), repeat=20)
        print(f"\nunpatched forward passes / s (batch 1): {1 / fwd:.1f}\n")
        print("| workload | patches run | one per forward (patches/s) | batched (patches/s) | speed-up | "
              "forward equivalents / patch |\n|---|---|---|---|---|---|")
        for name, nodes in workloads(model, n_tok).items():
            live = nodes.take(torch.randperm(len(nodes), generator=torch.Generator().manual_seed(0)))
            atpstar.acp(model, pairs, nodes=live.take(slice(0, 64)), progress=False)  # warm-up
            start = time.perf_counter()
            info = atpstar.acp(model, pairs, nodes=nodes, progress=False).info
            batched = (time.perf_counter() - start) / max(info["patches"], 1)
            naive = one_per_forward(model, pairs, live.take(live.pos > 0).to_nodes()[: args.naive])
            print(f"| {name} | {info['patches']:,} (+{info['skipped_identical']} identical, free) | {1 / naive:.1f} | "
                  f"{1 / batched:.1f} | **{naive / batched:.1f}x** | {info['forward_equivalents'] / info['forward_passes']:.2f} |")


if __name__ == "__main__":
    main()
