"""Exact activation patching throughput on SmolLM2-135M for one IOI pair.

Prints: nodes of each kind, unpatched forward passes per second, the measured fixed cost of a
forward pass (a / b, see atpstar.substrate.batching), and single-node patches per second for dense and sparse
node sets: batched as ``atpstar.acp`` does (cost-aware plan), batched the previous way (one batch
per position and 4-layer span), and one patch per forward pass (the naive loop), with forward-pass
equivalents per patch and the number of forward passes. Run: ``python -m benchmarks.acp_throughput``.
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch

import atpstar
from atpstar.substrate.batching import overhead_ratio
from atpstar.substrate.capture import Intervention, Patch, node_index, run
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


def workloads(model, n_tok: int, sparse: bool = False) -> dict:
    """Dense node sets, as exhaustive runs are: every head output; 16 neurons in every (layer, position).
    Sparse (``sparse=True``): random nodes of every kind, as verification of a ranking patches."""
    heads = atpstar.NodeSet.every(model, "head", n_tok)
    neurons = atpstar.NodeSet.every(model, "neuron", n_tok)
    out = {"head (all 3,780)": heads, "neuron (16 per layer x position)": neurons.take(neurons.unit % 96 == 0)}
    if sparse:
        every = atpstar.NodeSet.every(model, "all", n_tok)
        every = every.take(every.pos >= 2)  # nodes before the first differing token are free anyway
        order = torch.randperm(len(every), generator=torch.Generator().manual_seed(0))
        for n in (50, 200, 1000):
            out[f"sparse: {n} random nodes"] = every.take(order[:n])
    return out


def bucket_plan(self, group, pos, layer):
    """The previous batching: one batch per (position, 4-layer span), at most the memory-sized rows."""
    from atpstar.methods.acp import LAYER_SPAN
    from atpstar.substrate.patching import auto_batch_size, bucket_slices

    model = self.model
    size = self.batch_size or auto_batch_size(model, group.clean.shape[1], 1024)
    return bucket_slices(pos * model.n_layers + layer // LAYER_SPAN, size)


def run_acp(model, pairs, nodes, plan=None) -> tuple[float, dict]:
    """Seconds per patch and info of one ``acp`` run, with ``plan`` replacing acp's batch planner."""
    acp_module = importlib.import_module("atpstar.methods.acp")  # the module (the package exports the function)
    original = acp_module._Patcher._batches
    if plan is not None:
        acp_module._Patcher._batches = plan
    try:
        start = time.perf_counter()
        info = acp_module.acp(model, pairs, nodes=nodes, progress=False).info
        return (time.perf_counter() - start) / max(info["patches"], 1), info
    finally:
        acp_module._Patcher._batches = original


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
    ratio = overhead_ratio(model, pairs.clean[0], measure=True)
    print(f"\nunpatched forward passes / s (batch 1): {1 / fwd:.1f}; fixed cost of a forward pass a / b = "
          f"{ratio:.2f} rows (measured; acp uses {overhead_ratio(model, pairs.clean[0]):.2f} on CPUs)\n")
    print("| workload | patches run | one per forward | per (position, 4-layer span) | acp (cost-aware) | speed-up | "
          "forward equivalents / patch | forward passes |\n|---|---|---|---|---|---|---|---|")
    for name, nodes in workloads(model, n_tok, sparse=True).items():
        live = nodes.take(torch.randperm(len(nodes), generator=torch.Generator().manual_seed(0)))
        atpstar.acp(model, pairs, nodes=live.take(slice(0, 64)), progress=False)  # warm-up
        old, old_info = run_acp(model, pairs, nodes, plan=bucket_plan)
        new, info = run_acp(model, pairs, nodes)
        naive = one_per_forward(model, pairs, live.take(live.pos > 0).to_nodes()[: args.naive])
        print(f"| {name} | {info['patches']:,} (+{info['skipped_identical']} identical, free) | {1 / naive:.1f} /s | "
              f"{1 / old:.1f} /s ({old_info['forward_equivalents'] / old_info['patches']:.2f}) | {1 / new:.1f} /s | "
              f"**{naive / new:.1f}x** (was {naive / old:.1f}x) | {info['forward_equivalents'] / info['patches']:.2f} | "
              f"{info['batches']:,} (was {old_info['batches']:,}) |")


if __name__ == "__main__":
    main()
