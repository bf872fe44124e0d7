"""The cost-of-verified-recall study: IOI, CITY and RAND on SmolLM2 and Gemma 3 270M.

For each model and task: exact ground truth (cached compressed under benchmarks/results/study/,
computed on first use) for the node groups asked for: every attention node (``attn``), every neuron
at the final position (``neuron``), sampled neurons at every position (``neuron_pos``), on each single
prompt pair and on the distribution of all the task's pairs. Every method ranks the nodes; the cost
of verified recall is its estimation cost per pair plus one forward per node verified in its order
until the true top-k are all verified. Writes the curves table, PNG figures and docs/study.md from
every cached result (all models).

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.study          # SmolLM2, attn + neuron
    ... python -m benchmarks.study --groups neuron_pos                                    # neurons at every position
    ... python -m benchmarks.study --model gemma3-270m --groups attn --pairs 2            # Gemma 3 270M
    ... python -m benchmarks.study --docs-only                                            # docs from the cache
    python -m benchmarks.study --quick                  # under a minute, run by the tests; writes a new temporary folder

A quick run never writes to the published docs (docs/) or the cached results (benchmarks/results/study/):
its page, figures and results go to ``--out`` (default: a new temporary folder, printed at the end).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar  # noqa: E402
from atpstar import tasks  # noqa: E402
from benchmarks.studylib import frames, models, neuronpos, plots, report, truth  # noqa: E402
from benchmarks.studylib.rankings import atp_rankings, baseline_rankings, iterative_from_truth, reference_rankings  # noqa: E402

K_MAX = 100  # the largest top-k whose cost of verified recall is traced
DOCS = Path(__file__).resolve().parents[1] / "docs"
"""The published docs: study.md and its figures (docs/study/) are written here by full runs only."""


def get_truth(model, task: str, args, positional: bool = False):
    """The cached truth of one task (computed on first use): attention nodes (+ final-position neurons
    when the neuron group is asked for), or with ``positional`` the sampled neurons at every position."""
    module = neuronpos if positional else truth
    if module.path_for(task, args.results, args.prefix).exists() and not args.recompute:
        return module.load(task, args.results, args.prefix)
    pairs = tasks.TASKS[task](model, n=args.pairs, seed=args.seed)
    if positional:
        layers, units = neuronpos.sample(model, args.neuron_layers, args.neuron_units, seed=args.seed)
        return neuronpos.compute(model, task, pairs, layers, units, root=args.results, prefix=args.prefix,
                                 progress=not args.quick)
    layers = range(model.n_layers - 2, model.n_layers) if args.quick else None
    return truth.compute(model, task, pairs, neurons="neuron" in args.groups, root=args.results, layers=layers,
                         progress=not args.quick, prefix=args.prefix)


def curves_for(model, task: str, name: str, tr, groups: list[str], args, ratio: float, timings: dict) -> list[pd.DataFrame]:
    """Recall-cost rows of every method on one setting, for each node group and its subsets."""
    rows = []
    start = time.perf_counter()
    kinds = {"attn": ["attn"], "neuron": ["neuron"], neuronpos.GROUP: ["neuron"]}
    atp, seconds = atp_rankings(model, tr.pairs, ratio, kinds=sorted({k for g in groups for k in kinds[g]}))
    timings.setdefault("estimates", []).append({"setting": name, **seconds})
    for group in groups:
        exact = frames.truth_frame(model, tr, group)
        methods = {**reference_rankings(exact, seed=args.seed), **atp}
        base, seconds = baseline_rankings(model, tr.pairs, exact[frames.KEY], group, args.quick, seed=args.seed,
                                          only=args.baselines)
        timings.setdefault("baselines", []).append({"setting": name, "group": group, **seconds})
        methods.update(base)
        if name == "dist" and len(tr.pairs) > 1:
            per_pair = frames.per_pair_effects(tr, frames.universe(model, tr, group), group)
            keep = np.isfinite(per_pair).any(0)
            methods["Iterative"] = iterative_from_truth(per_pair[:, keep], exact[frames.KEY])
        for subset, sub_truth in frames.subsets(group, exact).items():
            k = min(K_MAX, len(sub_truth))
            for method, (ranking, est_cost) in methods.items():
                ranked = frames.restrict(ranking, sub_truth)
                curve = atpstar.recall_cost(ranked, sub_truth, k=k, estimation_cost=est_cost)
                rows.append(curve.assign(model=args.tag, task=task, setting=name, group=group, kind=subset,
                                         method=method))
        if name == "pair0" or args.quick:
            plots.scatter(exact, atp, f"{args.prefix}{task}", name, group, args.figures)
    timings.setdefault("settings", []).append({"setting": name, "seconds": time.perf_counter() - start})
    return rows


def scatters(model, task: str, args) -> None:
    """Only the pair-0 estimate-vs-exact figures (AtP and AtP*), from the cached truth."""
    for positional in sorted({g == neuronpos.GROUP for g in args.groups}):
        groups = [g for g in args.groups if (g == neuronpos.GROUP) == positional]
        kinds = sorted({"attn" if g == "attn" else "neuron" for g in groups})
        tr = get_truth(model, task, args, positional).subset([0])
        atp, _ = atp_rankings(model, tr.pairs, 1.0, kinds=kinds, variants=("AtP", "AtP*"))
        for group in groups:
            plots.scatter(frames.truth_frame(model, tr, group), atp, f"{args.prefix}{task}", "pair0", group,
                          args.figures)


def run_task(model, task: str, args) -> None:
    """Truth (cached), every setting's curves and timings of one task, saved under ``args.results``:
    ``curves_<prefix><task>.csv.gz`` for attention / final-position neurons, ``..._neuronpos`` for the
    neurons at every position."""
    for positional in sorted({g == neuronpos.GROUP for g in args.groups}):
        groups = [g for g in args.groups if (g == neuronpos.GROUP) == positional]
        t0 = time.perf_counter()
        tr = get_truth(model, task, args, positional)
        timings = {"model": args.tag, "truth": {"cached_compute_seconds": tr.seconds,
                                                "load_seconds": time.perf_counter() - t0}}
        ids = torch.stack([c for c in tr.pairs.clean if len(c) == tr.pairs.lengths[0]])
        ratio = atpstar.measure_backward_ratio(model, ids[:1], repeats=3 if args.quick else 7)
        rows = []
        for name, setting in frames.settings(tr):
            rows.extend(curves_for(model, task, name, setting, groups, args, ratio, timings))
        stem = f"{args.prefix}{task}{'_neuronpos' if positional else ''}"
        pd.concat(rows, ignore_index=True).to_csv(args.results / f"curves_{stem}.csv.gz", index=False,
                                                  float_format="%.6g")
        timings["backward_ratio"] = ratio
        if positional:
            timings["sample"] = {"layers": tr.layers.tolist(), "units_per_layer": int(tr.units.shape[1]),
                                 "seed": args.seed, "n_layers": model.n_layers, "d_mlp": model.d_mlp,
                                 "lengths": [int(n) for n in tr.pairs.lengths]}
        (args.results / f"timings_{stem}.json").write_text(json.dumps(timings, indent=1, default=float))


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 IOI pair, last 2 layers' attention nodes: seconds")
    parser.add_argument("--model", default="default", help="default (SmolLM2-135M) | gemma3-270m | a path or hub id")
    parser.add_argument("--groups", default="attn,neuron",
                        help="node groups: attn, neuron (final position), neuron_pos (sampled neurons, every position)")
    parser.add_argument("--tasks", default="ioi,city,rand", help="tasks to (re)compute; the docs use every cached task")
    parser.add_argument("--pairs", type=int, default=4, help="prompt pairs per task (the distribution)")
    parser.add_argument("--neuron-layers", type=int, default=6, help="neuron_pos: layers, evenly spread over the depth")
    parser.add_argument("--neuron-units", type=int, default=48, help="neuron_pos: random units per sampled layer")
    parser.add_argument("--baselines", default="Subsampling,Blocks,Hierarchical",
                        help="joint-patching baselines to run (Iterative is always run on the distribution)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recompute", action="store_true", help="recompute the cached ground truth")
    parser.add_argument("--truth-only", action="store_true", help="only compute (and cache) the ground truth")
    parser.add_argument("--scatter-only", action="store_true", help="only redraw the pair-0 scatter plots")
    parser.add_argument("--docs-only", action="store_true", help="only rebuild figures and study.md from cached curves")
    parser.add_argument("--out", type=Path, default=None,
                        help="where study.md and the figures go (default: docs/; with --quick a new temporary folder)")
    parser.add_argument("--results", type=Path, default=truth.ROOT, help="where the truth and curves are cached")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="atpstar-study-quick-")) if args.quick else DOCS
    if args.quick:
        args.tasks, args.pairs, args.groups = "ioi", 1, "attn"
        if args.results == truth.ROOT:
            args.results = args.out / "results"
        check_quick_paths(args.out, args.results)
    args.groups = args.groups.split(",")
    args.baselines = [b for b in args.baselines.split(",") if b]
    args.tag = models.tag_of(args.model)
    args.prefix = models.prefix(args.tag)
    args.figures = args.out / "study"
    return args


def check_quick_paths(out: Path, results: Path) -> None:
    """A quick run's numbers are not the study's: refuse to write them over the docs or the cached results."""
    for path, published in ((out, DOCS), (results, DOCS), (results, DOCS.parent / truth.ROOT)):
        if path.resolve() == published or published in path.resolve().parents:
            raise SystemExit(f"--quick would write its trial numbers into {published}: pass another --out "
                             "(or none: a new temporary folder)")


def main(argv=None) -> pd.DataFrame:
    args = parse(argv)
    args.figures.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if not args.docs_only:
        model = models.load(args.model)
        for task in args.tasks.split(","):
            if args.scatter_only:
                scatters(model, task, args)
            elif args.truth_only:
                for positional in sorted({g == neuronpos.GROUP for g in args.groups}):
                    get_truth(model, task, args, positional)
            else:
                run_task(model, task, args)
    if args.truth_only or args.scatter_only:
        return pd.DataFrame()
    curves, timings = report.load_results(args.results)
    plots.curves(curves, args.figures)
    report.write(curves, timings, args)
    if args.quick:
        print(f"quick run written to {args.out}")
    return curves


if __name__ == "__main__":
    main()
