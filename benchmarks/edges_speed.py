"""Edge AtP* and exact edge patching against their node counterparts, SmolLM2-135M, one IOI pair.

Prints the edge graph's size, the time and peak memory (peak resident set growth above the loaded
model, :mod:`benchmarks.isolated`) of edge AtP* over every edge versus node AtP* (``kinds="all"`` and
the default attention kinds), and the time per single patch of exact edge patching (``edge_acp`` on a
random sample of edges) versus node ``acp`` (a random sample of nodes of every kind). One thread.
Run: ``python -m benchmarks.edges_speed [--patches 1500]``.
"""

from __future__ import annotations

import argparse

import torch

import atpstar
from atpstar import edges as E
from atpstar.nodes import NodeSet
from benchmarks.isolated import answer, peak_of, run_child


def child(what: str, patches: int) -> None:
    """One measurement in a fresh process: peak memory growth of the first run, time of the second."""
    torch.set_num_threads(1)
    model = atpstar.load_model("default")
    pairs = atpstar.tasks.ioi(model, n=1)
    graph, n_pos = E.EdgeGraph.of(model), pairs.max_len
    gen = torch.Generator().manual_seed(0)
    if what == "edge_atp":
        fn = lambda: E.atp(model, pairs)  # noqa: E731
    elif what in ("node_atp_all", "node_atp_attn"):
        fn = lambda: atpstar.atp(model, pairs, kinds="all" if what.endswith("all") else None, progress=False)  # noqa: E731
    elif what == "edge_acp":
        every = E.EdgeSet.every(graph, n_pos)
        sample = every.take(torch.randperm(len(every), generator=gen)[:patches])
        fn = lambda: E.edge_acp(model, pairs, sample)  # noqa: E731
    else:
        nodes = NodeSet.every(model, "all", n_pos)
        sample = nodes.take(torch.randperm(len(nodes), generator=gen)[:patches])
        fn = lambda: atpstar.acp(model, pairs, nodes=sample, progress=False)  # noqa: E731
    out, _, peak = peak_of(fn)
    out, seconds, _ = peak_of(fn)
    extra = {"top": out.top(8)[["name", "score", "effect"]].to_string(index=False)} if what == "edge_atp" else {}
    if what.endswith("acp"):
        extra["forward_equivalents"] = float(out.info["cost"].forward)
    answer({"seconds": seconds, "peak_mib": peak.growth_mb, "n_pos": n_pos, "graph": repr(graph),
            "edges": graph.n_edges(n_pos), **extra})


def measure(what: str, patches: int) -> dict:
    return run_child("benchmarks.edges_speed", ["--child", what, "--patches", patches])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patches", type=int, default=1500, help="sampled edges / nodes for the patching rates")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.patches)
    res = {w: measure(w, args.patches) for w in ("edge_atp", "node_atp_all", "node_atp_attn", "edge_acp", "node_acp")}
    e = res["edge_atp"]
    print(f"SmolLM2-135M, one IOI pair, {e['n_pos']} positions; {e['graph']}; {e['edges']} edges; one thread")
    print(f"edge AtP* over every edge: {e['seconds']:.2f} s, peak +{e['peak_mib']:.0f} MiB")
    for name in ("node_atp_all", "node_atp_attn"):
        r = res[name]
        print(f"{name}: {r['seconds']:.2f} s, peak +{r['peak_mib']:.0f} MiB -> edge/node time "
              f"{e['seconds'] / r['seconds']:.2f}x, memory {e['peak_mib'] / max(r['peak_mib'], 1e-9):.2f}x")
    per_edge, per_node = (res[w]["seconds"] / args.patches for w in ("edge_acp", "node_acp"))
    print(f"exact edge patching: {1e3 * per_edge:.2f} ms/patch, {res['edge_acp']['forward_equivalents'] / args.patches:.3f} "
          f"forward equivalents/patch; node acp: {1e3 * per_node:.2f} ms/patch, "
          f"{res['node_acp']['forward_equivalents'] / args.patches:.3f} forward equivalents/patch "
          f"({args.patches} random edges / nodes, captures included) -> edge/node time {per_edge / per_node:.2f}x")
    print("top edges (AtP*):\n" + e["top"])


if __name__ == "__main__":
    main()
