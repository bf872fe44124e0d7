"""Circuit methods compared by the MIB circuit track's yardstick: faithfulness curves, CPR, CMD, cost, time.

For each model and task: AtP, AtP*, EAP, EAP-IG-inputs and EAP-IG-activations (5 steps, as MIB), circuit IG
(:func:`atpstar.circuits.circuit_ig`, 20 steps) and its mean with EAP-IG-inputs, atpstar's verified rankings (the
top of an estimate re-scored by exact position-free edge patching, :mod:`atpstar.circuits.build`) and random
scores, each scored by :func:`atpstar.circuits.mib` (the signed ranking's curve gives CPR, the absolute ranking's
CMD). Cost is the method's work in forward-pass equivalents per prompt pair (a backward pass counted at the
backward/forward time ratio measured on the model at hand); time is its wall time on one thread. The curves' own
evaluation is not counted. Results are cached per (model, task, variant) as CSV under ``--out``; a method already
there is not recomputed (``--recompute`` redoes the ``--methods`` given). Variants: the BOS token in front (the
default; ``--no-bos``), one key/value reader per query head (``--ungroup``), circuits evaluated on pairs of
another seed (``--heldout SEED``).

    python -m benchmarks.circuits_compare --models default --tasks ioi,city --pairs 8 --verify 0.005
    python -m benchmarks.circuits_compare --models gemma3-270m --tasks ioi --pairs 8 --ungroup
    python -m benchmarks.circuits_compare --figure          # table + docs/circuits_evidence.png from the cache
    python -m benchmarks.circuits_compare --quick --out /tmp/x   # tiny random model, seconds
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar
from atpstar import tasks
from atpstar.circuits import MIB_GRID, mib, mib_scores
from atpstar.circuits.build import CircuitScores, exact, mean_magnitude, signed_by, verified
from atpstar.circuits.circuit_ig import circuit_ig
from atpstar.cost import Cost
from atpstar.edges import EdgeGraph, atp
from atpstar.edges.eap_ig import eap, eap_ig_activations, eap_ig_inputs
from benchmarks.plotting import pyplot, save
from benchmarks.studylib import models
from benchmarks.tiny import random_pairs, tiny_llama

OUT = {True: Path("docs/results/circuits_bos"), False: Path("docs/results/circuits")}  # by --bos
FIGURE = Path("docs/circuits_evidence.png")
MODEL_TAGS = {"default": "smollm2-135m", "gemma3-270m": "gemma3-270m", "quick": "tiny-llama"}
ORDER = ["random", "AtP", "AtP*", "EAP", "EAP-IG-inputs", "EAP-IG-activations", "verified AtP*",
         "verified EAP-IG-inputs", "AtP* with IG signs", "verified AtP* with IG signs", "circuit IG",
         "verified circuit IG", "circuit IG + EAP-IG", "exact"]
COMBINED = {"AtP* with IG signs": ("AtP*", "EAP-IG-inputs", signed_by),
            "circuit IG + EAP-IG": ("circuit IG", "EAP-IG-inputs", mean_magnitude)}
"""name -> (first ranking, second ranking, how they combine): rankings made of two others' scores."""
NEEDS = {**{name: [a, b] for name, (a, b, _) in COMBINED.items()},
         **{m: [m.removeprefix("verified ")] for m in ORDER if m.startswith("verified ")}}


def estimators(steps: int, circuit_steps: int) -> dict:
    """name -> f(model, pairs) -> EdgeScores (the field's methods and atpstar's estimates)."""
    return {"AtP": lambda m, p: atp(m, p, qk_fix=False, graddrop=False),
            "AtP*": lambda m, p: atp(m, p),
            "EAP": lambda m, p: eap(m, p),
            "EAP-IG-inputs": lambda m, p: eap_ig_inputs(m, p, ig_steps=steps),
            "EAP-IG-activations": lambda m, p: eap_ig_activations(m, p, ig_steps=steps),
            "circuit IG": lambda m, p: circuit_ig(m, p, ig_steps=circuit_steps)}


def setting(model_name: str, task: str, args):
    """(model, pairs the methods score, pairs the circuits are evaluated on): a tiny random Llama with random pairs
    for --quick, else the named model and task; the evaluation pairs are the scoring pairs unless --heldout."""
    seeds = [args.seed, args.seed if args.heldout is None else args.heldout]
    if model_name == "quick":
        return tiny_llama(torch.float64), *(random_pairs([8, 9, 8], seed=1 + s) for s in seeds)
    model = models.load(model_name)
    if args.ungroup:
        model = atpstar.ungroup_kv(model)
    return model, *(tasks.TASKS[task](model, n=args.pairs, seed=s, bos=args.bos) for s in seeds)


def compute(name: str, model, pairs, args, cache: dict) -> tuple[torch.Tensor, Cost, float, dict]:
    """((W, R) MIB-convention scores, cost, wall seconds, extra columns) of one method."""
    graph = EdgeGraph.of(model)
    start = time.perf_counter()
    if name == "random":
        gen = torch.Generator().manual_seed(args.seed)
        scores = torch.randn(graph.shape, generator=gen, dtype=torch.float64).masked_fill(~graph.valid, torch.nan)
        return scores, Cost(pairs=len(pairs)), time.perf_counter() - start, {}
    if name == "exact":
        result = exact(model, pairs)
        return result.scores, result.cost, time.perf_counter() - start, {"verified": result.info["verified"]}
    if name in COMBINED:
        first, second, combine = COMBINED[name]
        (a, ca, ta, _), (b, cb, tb, _) = cache[first], cache[second]
        result = combine(CircuitScores(first, graph, a, ca), CircuitScores(second, graph, b, cb))
        return result.scores, result.cost, ta + tb, {}
    if name.startswith("verified "):
        base = name.removeprefix("verified ")
        scores, cost, seconds, _ = cache[base]
        top = max(1, int(args.verify * graph.n_edges()))
        result = verified(model, pairs, CircuitScores(base, graph, scores, cost), top=top)
        return result.scores, result.cost, seconds + time.perf_counter() - start, {"verified": top}
    edge_scores = estimators(args.ig_steps, args.circuit_ig_steps)[name](model, pairs)
    return mib_scores(edge_scores, pairs), Cost.of(edge_scores), time.perf_counter() - start, {}


def run_setting(model_name: str, task: str, args) -> pd.DataFrame:
    """Every requested method of one (model, task), cached rows reused."""
    tag = MODEL_TAGS.get(model_name, model_name.replace("/", "_"))
    suffix = (("_bos" if args.bos else "") + ("_ungrouped" if args.ungroup else "")
              + ("" if args.heldout is None else f"_heldout{args.heldout}"))
    path = Path(args.out) / f"{tag}_{task}{suffix}.csv"
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["method"])
    wanted = [m for m in ORDER if m in args.methods.split(",")]
    todo = wanted if args.recompute else [m for m in wanted if m not in set(old.method)]  # the rest stays cached
    if not todo:
        return old
    model, pairs, eval_pairs = setting(model_name, task, args)
    ratio = atpstar.measure_backward_ratio(model, pairs.clean[0][None], repeats=3)
    rows, cache = [], {}
    for name in todo:
        for need in [n for m in NEEDS.get(name, []) for n in NEEDS.get(m, []) + [m]]:
            if need not in cache:
                cache[need] = compute(need, model, pairs, args, cache)
        cache[name] = scores, cost, seconds, extra = compute(name, model, pairs, args, cache)
        result = mib(model, eval_pairs, scores)
        row = {"model": tag, "task": task, "method": name, "pairs": len(pairs), "cpr": result.cpr,
               "cmd": result.cmd, "cost_per_pair": cost.per_pair(ratio), "forward": cost.forward,
               "backward": cost.backward, "backward_ratio": ratio, "seconds": seconds,
               "edges": EdgeGraph.of(model).n_edges(), **extra}
        for i, (fs, fa) in enumerate(zip(result.signed.f, result.absolute.f)):
            row[f"signed_{i}"], row[f"abs_{i}"] = fs, fa
        rows.append(row)
        print(f"{tag} {task} {name}: CPR {result.cpr:.3f} CMD {result.cmd:.3f} "
              f"cost {row['cost_per_pair']:.1f} fwd/pair, {seconds:.1f} s", flush=True)
        keep = old[~old.method.isin([r["method"] for r in rows])]
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.concat([keep, pd.DataFrame(rows)], ignore_index=True).to_csv(path, index=False)
    return pd.read_csv(path)


def cached(folder: Path, bos: bool, ungroup: bool, heldout: bool) -> pd.DataFrame:
    """Every cached row of one variant (with or without BOS, grouped or ungrouped key/value readers, evaluated on
    the scoring pairs or held-out ones) in ``folder``."""
    paths = [p for p in sorted(folder.glob("*.csv")) if ("_bos" in p.stem) == bos
             and ("_ungrouped" in p.stem) == ungroup and ("_heldout" in p.stem) == heldout]
    if not paths:
        raise FileNotFoundError(f"no cached results of this variant in {folder}: run the comparison first")
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def table(frame: pd.DataFrame) -> str:
    """Markdown table: one row per (model, task, method)."""
    frame = frame.assign(order=frame.method.map({m: i for i, m in enumerate(ORDER)}))
    frame = frame.sort_values(["model", "task", "order"])
    lines = ["| model | task | method | CPR ↑ | CMD ↓ | cost (fwd-pass eq. / pair) | time (s) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in frame.itertuples():
        lines.append(f"| {r.model} | {r.task} | {r.method} | {r.cpr:.3f} | {r.cmd:.3f} | {r.cost_per_pair:.1f} | "
                     f"{r.seconds:.1f} |")
    return "\n".join(lines)


FIGURE_METHODS = ["random", "AtP", "AtP*", "EAP-IG-inputs", "EAP-IG-activations", "verified AtP*", "circuit IG",
                  "verified circuit IG", "circuit IG + EAP-IG"]
"""The methods drawn (one colour and marker each); EAP is AtP's curve, the IG-signed rankings are in the tables."""
MARKERS = "os^vDPX*p"


def figure(frame: pd.DataFrame, path: Path) -> None:
    """Signed (CPR) and absolute (CMD) faithfulness curves, one row of panels per (model, task)."""
    plt = pyplot()
    frame = frame[frame.method.isin(FIGURE_METHODS)]
    settings = list(frame.groupby(["model", "task"], sort=True))
    fig, axes = plt.subplots(len(settings), 2, figsize=(11, 3.6 * len(settings)), squeeze=False)
    x = np.array(MIB_GRID) * 100
    colors = dict(zip(FIGURE_METHODS, plt.get_cmap("tab10").colors))
    markers = dict(zip(FIGURE_METHODS, MARKERS))
    for row, ((model, task), part) in zip(axes, settings):
        for ax, kind, title in zip(row, ("signed", "abs"), ("signed ranking (CPR: area)", "absolute ranking (CMD)")):
            for r in sorted(part.itertuples(), key=lambda r: FIGURE_METHODS.index(r.method)):
                f = [getattr(r, f"{kind}_{i}") for i in range(len(x))]
                style = "-" if r.method.startswith(("verified", "exact")) else "--"
                ax.plot(x, f, style, marker=markers[r.method], ms=4, color=colors[r.method], label=r.method)
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_xscale("log")
            ax.set_title(f"{model} {task}: {title}", fontsize=10)
            ax.set_xlabel("edges in the circuit (% of all edges)")
            ax.set_ylabel("faithfulness f")
    by_label = {}
    for ax in axes.flat:
        by_label.update(zip(*reversed(ax.get_legend_handles_labels())))
    labels = [m for m in FIGURE_METHODS if m in by_label]
    handles = [by_label[m] for m in labels]
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=9)
    save(fig, path, dpi=110, rect=(0, 0.07 / len(settings) + 0.02, 1, 1))


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="default", help="default (SmolLM2-135M) | gemma3-270m, comma-separated")
    ap.add_argument("--tasks", default="ioi", help="ioi | city | rand, comma-separated")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True,
                    help="the beginning-of-sequence token in front of every prompt (the library's default and "
                         "MIB's; cached as *_bos.csv; --no-bos caches *.csv beside them)")
    ap.add_argument("--heldout", type=int, default=None,
                    help="evaluate the circuits on other pairs (drawn with this seed) than the methods score, as MIB "
                         "scores circuits found on its train split on a held-out split (cached as *_heldoutN.csv)")
    ap.add_argument("--ungroup", action="store_true",
                    help="one key and value input per query head (atpstar.ungroup_kv), as MIB's graphs have under "
                         "grouped-query attention (cached as *_ungrouped.csv)")
    ap.add_argument("--ig-steps", type=int, default=5, help="EAP-IG steps (MIB uses 5)")
    ap.add_argument("--circuit-ig-steps", type=int, default=20, help="circuit IG steps")
    ap.add_argument("--verify", type=float, default=0.01,
                    help="share of all edges verified exactly by the verified methods (default 1%%)")
    ap.add_argument("--methods", default=None,
                    help=f"comma-separated, from {ORDER} (default: all but 'exact', which patches every edge: small "
                         "graphs only; with --quick all)")
    ap.add_argument("--out", default=None, help=f"folder of the cached CSVs (default {OUT[True]}, with --no-bos "
                                                f"{OUT[False]})")
    ap.add_argument("--recompute", action="store_true",
                    help="recompute the --methods already cached (the other cached methods stay)")
    ap.add_argument("--figure", action="store_true", help="only the table and the figure, from the cache")
    ap.add_argument("--quick", action="store_true", help="a tiny random Llama (no download), every method by default")
    args = ap.parse_args(argv)
    if args.quick:
        args.models, args.tasks, args.ig_steps, args.circuit_ig_steps, args.verify = "quick", "random", 2, 2, 0.1
        args.bos = False  # random token ids: no tokenizer, no BOS
    if args.out is None:
        args.out = str(OUT[args.bos])
    if args.methods is None:
        args.methods = ",".join(m for m in ORDER if args.quick or m != "exact")
    unknown = sorted(set(args.methods.split(",")) - set(ORDER))
    if unknown:
        ap.error(f"unknown methods {unknown}; choose from {ORDER}")
    return args


def main(argv=None) -> pd.DataFrame:
    args = parse(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.figure:
        frame = cached(Path(args.out), args.bos, args.ungroup, args.heldout is not None)
        suffix = (("" if args.bos else "_nobos") + ("_ungrouped" if args.ungroup else "")
                  + ("" if args.heldout is None else "_heldout"))
        figure(frame, FIGURE.with_stem(FIGURE.stem + suffix))
    else:
        frame = pd.concat([run_setting(m, t, args) for m in args.models.split(",") for t in args.tasks.split(",")],
                          ignore_index=True)
    print(table(frame))
    return frame


if __name__ == "__main__":
    main()
