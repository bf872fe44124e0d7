"""The edge evidence's time and memory: plain forward+backward, node AtP* (every kind), edge AtP* (every
edge), edge patching and node patching per patch, each on one pair and in its own process
(:mod:`benchmarks.isolated`: peak memory is per process), one after the other."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import atpstar
from atpstar import edges as E
from benchmarks.isolated import answer, peak_of, run_child

from .setting import choose_readers, setting, universe

MEASUREMENTS = ("forward_backward", "node_atpstar", "edge_atpstar", "edge_patch", "node_patch")


def stage_timing(args, out: Path, model, pairs, node_truth) -> dict:
    """Every measurement in its own process, cached in ``timing.json`` (``--quick``: in this process)."""
    path = out / "timing.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for what in MEASUREMENTS:
        if what in results:
            continue
        if args.quick:
            results[what] = measure(args, what, model, pairs, node_truth)
            continue
        results[what] = run_child("benchmarks.edges_evidence", [
            "--measure", what, "--timing-pair", args.timing_pair, "--readers", args.readers, "--patches", args.patches])
        print(f"[timing] {results[what]}", flush=True)
        path.write_text(json.dumps(results, indent=1))
    path.write_text(json.dumps(results, indent=1))
    return results


def child(args) -> None:
    """One measurement in this (fresh) process, answered to :func:`stage_timing`."""
    torch.set_num_threads(1)
    model, pairs, node_truth = setting(args)
    answer(measure(args, args.measure, model, pairs, node_truth))


def measure(args, what: str, model, pairs, node_truth) -> dict:
    """Time and peak memory of one measurement on pair ``args.timing_pair``, after the model is loaded and
    warmed up, so ``peak_increase_mb`` is what the measured work adds."""
    pair = pairs.select([args.timing_pair])
    graph = E.EdgeGraph.of(model)
    with torch.no_grad():  # warm-up (lazy initialisation), little memory
        atpstar.substrate.capture.run(model, pair.clean[0][None])
    if what in ("forward_backward", "node_atpstar", "edge_atpstar"):
        run_once, n = {
            "forward_backward": lambda: forward_backward(model, pair),
            "node_atpstar": lambda: atpstar.atp(model, pair, kinds="all", progress=False),
            "edge_atpstar": lambda: E.atp(model, pair, graph=graph),
        }[what], None
    else:
        run_once, n = patching(args, what, model, pairs, pair, graph, node_truth)
    _, seconds, peak = peak_of(run_once)
    extra = {} if n is None else {"patches": n, "ms_per_patch": 1e3 * seconds / n}
    return {"what": what, "seconds": seconds, "peak_rss_mb": peak.peak_mb, "base_rss_mb": peak.base_mb,
            "peak_increase_mb": peak.growth_mb, "peak_reset": peak.reset, **extra}


def patching(args, what: str, model, pairs, pair, graph, node_truth):
    """(the warmed-up patching call, its number of patches): ``edge_patch``, a random sample of the edges
    into the pair's top readers; ``node_patch``, every q/k/v node at those readers' (layer, position)."""
    readers = choose_readers(graph, {k: v[[args.timing_pair]] for k, v in node_truth.items()}, args.readers,
                             pairs.max_len).iloc[:-1]  # attention readers only: same layers/positions both ways
    readers = readers.assign(pos=readers.pos - (pairs.max_len - pair.max_len))  # the pair's own positions
    readers = readers[readers.pos >= 0]
    if what == "edge_patch":
        edges = universe(graph, readers)
        pick = torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[: args.patches]
        edges = edges.take(pick)
        patcher = E.EdgePatcher(model, pair, graph=graph)
        patcher.single(edges.take(slice(0, 8)))  # warm-up
        return lambda: patcher.single(edges), len(edges)
    rows = []
    for layer, pos in sorted(set(zip(readers.layer, readers.pos))):
        rows += [f"L{layer}.q.H{h}@{pos}" for h in range(model.n_heads)]
        rows += [f"L{layer}.{k}.G{g}@{pos}" for k in ("k", "v") for g in range(model.n_kv_heads)]
    atpstar.acp(model, pair, nodes=rows[:8], progress=False)  # warm-up
    return lambda: atpstar.acp(model, pair, nodes=rows, progress=False), len(rows)


def forward_backward(model, pair) -> None:
    """A plain forward with grad and a backward of the pair's metric (clean prompt)."""
    from atpstar.metrics import resolve
    from atpstar.substrate.capture import Intervention, run

    metric = resolve(None, pair)
    ids = pair.clean[0][None]
    hooks = Intervention(model, grad=True)
    with torch.enable_grad():
        logits = run(model, ids, hooks)
        metric(logits, pair).sum().backward()
