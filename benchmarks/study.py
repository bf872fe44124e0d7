"""The cost-of-verified-recall study (SPEC.md §7–§9) on SmolLM2: IOI, CITY and RAND.

For each task: exact ground truth for every attention node and for every neuron at the final
position (cached compressed under benchmarks/results/study/, computed on first use), on each single
prompt pair and on the distribution of all the task's pairs. Every method ranks the nodes; the cost
of verified recall is its estimation cost per pair plus one forward per node verified in its order
until the true top-k are all verified. Writes the curves table, PNG figures and docs/study.md.

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/study.py          # full study
    python benchmarks/study.py --quick --out /tmp/study                                     # seconds, run by the tests
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import atpstar  # noqa: E402
from atpstar import tasks  # noqa: E402
from studylib import frames, plots, report, truth  # noqa: E402
from studylib.rankings import atp_rankings, baseline_rankings, iterative_from_truth, reference_rankings  # noqa: E402

K_MAX = {"attn": 100, "neuron": 100}


def get_truth(model, task: str, args) -> truth.Truth:
    path = truth.path_for(task, args.results)
    if path.exists() and not args.recompute:
        return truth.load(task, args.results)
    pairs = tasks.TASKS[task](model, n=args.pairs, seed=args.seed)
    layers = range(model.n_layers - 2, model.n_layers) if args.quick else None
    return truth.compute(model, task, pairs, neurons=not args.quick, root=args.results, layers=layers,
                         progress=not args.quick)


def curves_for(model, task: str, name: str, tr: truth.Truth, args, ratio: float, timings: dict) -> list[pd.DataFrame]:
    """Recall-cost rows of every method on one setting, for each node group and kind."""
    rows = []
    groups = ["attn"] if args.quick else list(frames.GROUPS)
    start = time.perf_counter()
    atp, seconds = atp_rankings(model, tr.pairs, ratio, kinds="all" if "neuron" in groups else "attn")
    timings.setdefault("estimates", []).append({"setting": name, **seconds})
    for group in groups:
        exact = frames.truth_frame(model, tr, group)
        methods = {**reference_rankings(exact, seed=args.seed), **atp}
        base, seconds = baseline_rankings(model, tr.pairs, exact[frames.KEY], group, args.quick, seed=args.seed)
        timings.setdefault("baselines", []).append({"setting": name, "group": group, **seconds})
        methods.update(base)
        if name == "dist" and len(tr.pairs) > 1:
            per_pair = frames.per_pair_effects(tr, frames.universe(model, tr, group), group)
            keep = np.isfinite(per_pair).any(0)
            methods["Iterative"] = iterative_from_truth(per_pair[:, keep], exact[frames.KEY])
        for subset in ["all", *frames.kinds_of(group)] if group == "attn" else ["all"]:
            sub_truth = exact if subset == "all" else exact[exact["kind"] == subset]
            k = min(K_MAX[group], len(sub_truth))
            for method, (ranking, est_cost) in methods.items():
                ranked = frames.restrict(ranking, sub_truth)
                curve = atpstar.recall_cost(ranked, sub_truth, k=k, estimation_cost=est_cost)
                rows.append(curve.assign(task=task, setting=name, group=group, kind=subset, method=method))
        if name == "pair0" or args.quick:
            plots.scatter(exact, atp, task, name, group, args.figures)
    timings.setdefault("settings", []).append({"setting": name, "seconds": time.perf_counter() - start})
    return rows


def run_task(model, task: str, args) -> None:
    """Truth (cached), every setting's curves and timings of one task, saved under ``args.results``."""
    t0 = time.perf_counter()
    tr = get_truth(model, task, args)
    timings = {"truth": {"cached_compute_seconds": tr.seconds, "load_seconds": time.perf_counter() - t0}}
    ids = torch.stack([c for c in tr.pairs.clean if len(c) == tr.pairs.lengths[0]])
    ratio = atpstar.measure_backward_ratio(model, ids[:1], repeats=3 if args.quick else 7)
    rows = []
    for name, setting in frames.settings(tr):
        rows.extend(curves_for(model, task, name, setting, args, ratio, timings))
    pd.concat(rows, ignore_index=True).to_csv(args.results / f"curves_{task}.csv.gz", index=False, float_format="%.6g")
    timings["backward_ratio"] = ratio
    (args.results / f"timings_{task}.json").write_text(json.dumps(timings, indent=1, default=float))


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 IOI pair, last 2 layers' attention nodes: seconds")
    parser.add_argument("--tasks", default="ioi,city,rand", help="tasks to (re)compute; the docs use every cached task")
    parser.add_argument("--pairs", type=int, default=4, help="prompt pairs per task (the distribution)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recompute", action="store_true", help="recompute the cached ground truth")
    parser.add_argument("--docs-only", action="store_true", help="only rebuild figures and study.md from cached curves")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="where study.md and the figures go")
    parser.add_argument("--results", type=Path, default=truth.ROOT, help="where the truth and curves are cached")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.pairs = "ioi", 1
        if args.results == truth.ROOT:
            args.results = args.out / "results"
    args.figures = args.out / "study"
    args.figures.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if not args.docs_only:
        model = atpstar.load_model("default")
        for task in args.tasks.split(","):
            run_task(model, task, args)
    cached = [t for t in tasks.TASKS if (args.results / f"curves_{t}.csv.gz").exists()]
    if not cached:
        raise SystemExit(f"no cached curves under {args.results}: run without --docs-only first")
    curves = pd.concat([pd.read_csv(args.results / f"curves_{t}.csv.gz") for t in cached], ignore_index=True)
    timings = {t: json.loads((args.results / f"timings_{t}.json").read_text()) for t in cached}
    plots.curves(curves, args.figures)
    report.write(curves, timings, args)
    return curves


if __name__ == "__main__":
    main()
