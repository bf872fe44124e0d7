"""The diagnostic's cost against its tightness on SmolLM2 (IOI, CITY, RAND), against the exact truth.

For each task (the study's 4 pairs, exact per-pair effects of every attention node cached in
benchmarks/results/study/truth_<task>.npz): AtP* ranking, top K0 = 10 verified, ONE diagnostic of the
rest (``samples`` random subsets, AtP* estimates subtracted), then re-bounded from the same subsets
after verifying the top K = 10, 30, 100 (:meth:`Diagnosis.rebound`: no new forward pass; the exact
effects are the cached truth, which is what verification returns). For each (task, K, J) it reports θ of
the sub-Gaussian bound (before), of the capped bound (after: per-node ∧ residual energy) and of the
normal one, each over the TRUE largest unverified |c|, and the additivity of the real subsets.

Coverage over seeds: the same bounds on simulated additive subsets of the same nodes, with the real
effects c and the real AtP* estimates (y_j = Σ_{n∈S_j} q_n (c − ê)(n)): share of seeds where θ ≥ the
largest unverified |c|, for each K, and for all three K at once with δ/(i(i+1)) (the stop rule's levels).

The θ-vs-verified curve re-bounds the real subsets at every K up to ``--curve-max`` (the stop rule's
path) and compares the cost of stopping when θ < the target with verifying blindly (every node).

Writes benchmarks/results/diagnostic_cost.csv, .._coverage.csv, .._curve.csv and diagnostic_cost.png (the stop rule it
draws is the former one, with drop; docs/diagnostic.md shows the present one, diagnostic_theta.png).

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.diagnostic_cost
       [--tasks ioi,city,rand] [--p 0.2] [--samples 300] [--seeds 200] [--quick]
(about 10 minutes on one thread of the shared machine; reruns resume from the checkpoints in
benchmarks/results/study/ckpt/)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar
from atpstar import Budget, NodeSet
from atpstar.diagnostics.bound import SubsetSums, node_stats, spent_delta
from atpstar.diagnostics.diagnostic import diagnose, memberships
from atpstar.types import ALL_KINDS
from benchmarks.plotting import pyplot, save
from benchmarks.studylib import truth as study_truth

OUT = Path("benchmarks/results")
PNG = Path("benchmarks/results/diagnostic_cost.png")
CKPT = Path("benchmarks/results/study/ckpt")
DELTA, K0, KS = 0.05, 10, (10, 30, 100)


def mean_truth(truth, nodes: NodeSet) -> torch.Tensor:
    """(N,) exact mean effect over the pairs that have each node (0 for none)."""
    out = torch.zeros(len(nodes), dtype=torch.float64)
    for k in nodes.kind.unique().tolist():
        sel = nodes.kind == k
        with np.errstate(all="ignore"):
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                table = torch.from_numpy(np.nanmean(truth.per_pair(ALL_KINDS[k].value), 0)).double()
        out[sel] = table[nodes.layer[sel], nodes.unit[sel], nodes.pos[sel]]
    return out.nan_to_num()


def thetas(stats, delta):
    return {b: dataclasses.replace(stats, bound=b).theta(delta) for b in ("subgaussian", "capped", "normal")}


def real_rows(task, model, pairs, truth, scores, ranking, samples, p, grid):
    every = ranking  # NodeSet in rank order
    c_all = mean_truth(truth, every)
    v0 = atpstar.verify(model, pairs, scores, budget=Budget(nodes=K0), progress=False)
    ckpt = CKPT / f"diagnostic_cost_{task}_p{p}.ckpt"
    t0 = time.perf_counter()
    full = diagnose(model, pairs, v0, estimates=scores, samples=samples, p=p, delta=DELTA, checkpoint=ckpt,
                    progress=False, bound="capped")
    seconds = time.perf_counter() - t0
    per_subset = (full.cost.per_pair() - 2) / max(samples - full.resumed, 1) if full.resumed < samples else math.nan
    sec_subset = full.cost.seconds / max(samples - full.resumed, 1) if full.resumed < samples else math.nan
    c_nodes = mean_truth(truth, full.nodes)
    members = memberships(len(full.nodes), p, 0, 0, samples)
    presence = full.design.presence
    additive = members.double() @ (c_nodes * presence)
    error = full.design.subset_mean - additive
    rows = []
    for j in grid:
        d = full if j == samples else diagnose(model, pairs, v0, estimates=scores, samples=j, p=p, delta=DELTA,
                                                checkpoint=ckpt, progress=False, bound="capped")
        for k in KS:
            top = every.take(slice(0, k))
            c_top = mean_truth(truth, top)
            dk = d if k == K0 else d.rebound((top, c_top))
            left = c_all[k:]
            true_max = float(left.abs().max())
            th = thetas(dk.stats, DELTA)
            # the stop rule's re-bound: subsets holding a verified node with |c| >= half the largest verified left out
            try:
                dd = d if k == K0 else d.rebound((top, c_top), drop_above=0.5 * float(c_top.abs().max()))
                th["capped_drop"] = dd.stats.theta(DELTA) if dd.stats.bound == "capped" else math.nan
                kept = dd.samples
            except ValueError:
                th["capped_drop"], kept = math.inf, 0
            rows.append({"task": task, "p": p, "J": j, "K": k, "unverified": len(left), "sampled": len(dk.nodes),
                         "true_max": true_max, **{f"theta_{b}": v for b, v in th.items()},
                         **{f"ratio_{b}": v / true_max for b, v in th.items()},
                         "top_suspect": dk.suspects["name"].iloc[0], "subsets_kept_drop": kept,
                         "fwd_per_pair": j * per_subset if math.isfinite(per_subset) else math.nan,
                         "seconds": j * sec_subset if math.isfinite(sec_subset) else math.nan,
                         "additivity_rms": float(error[:j].pow(2).mean().sqrt()),
                         "sd_I": float(full.design.subset_mean[:j].std())})
            print(rows[-1], flush=True)
    return rows, full, seconds


def coverage_rows(task, c_all, est_all, static, p, samples, seeds):
    """Simulated additive subsets of the same nodes (real c, real AtP* estimates): θ ≥ truth?"""
    rows = []
    live = ~static
    hits = {(b, k): 0 for b in ("subgaussian", "capped", "normal") for k in KS}
    ratios = {b: [] for b in hits}
    joint = {b: 0 for b in ("subgaussian", "capped")}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        idx = np.nonzero(live[K0:])[0] + K0
        X = torch.from_numpy(rng.random((samples, len(idx))) < p)
        resid = (c_all - est_all)[idx]
        ok = {b: True for b in joint}
        for i, k in enumerate(KS, start=1):
            keep = torch.from_numpy(idx >= k)
            y = X[:, keep].double() @ resid[keep]
            sums = SubsetSums(int(keep.sum()))
            sums.add(X[:, keep].contiguous(), y)
            stats = node_stats(sums, p, est_all[idx][keep], "capped")
            true_max = float(c_all[k:].abs().max())
            for b in hits:
                if b[1] == k:
                    theta = dataclasses.replace(stats, bound=b[0]).theta(DELTA)
                    hits[b] += theta >= true_max
                    ratios[b].append(theta / true_max)
            for b in joint:
                ok[b] &= dataclasses.replace(stats, bound=b).theta(spent_delta(DELTA, i)) >= true_max
        for b in joint:
            joint[b] += ok[b]
    for (b, k), h in hits.items():
        rows.append({"task": task, "p": p, "J": samples, "K": k, "bound": b, "seeds": seeds, "covered": h,
                     "median_ratio": float(np.median(ratios[(b, k)]))})
    for b, h in joint.items():
        rows.append({"task": task, "p": p, "J": samples, "K": "all (stop-rule levels)", "bound": b, "seeds": seeds,
                     "covered": h})
    return rows


def curve_rows(task, full, ranking, truth, kmax, step, samples):
    """θ (stop-rule levels) against verified K, from the one sample; true largest unverified |c|."""
    c_all = mean_truth(truth, ranking)
    rows = []
    for i, k in enumerate(range(K0, kmax + 1, step), start=1):
        top = ranking.take(slice(0, k))
        if k == K0:
            theta = dataclasses.replace(full, delta=spent_delta(DELTA, 1)).theta
            plain = theta
        else:
            plain = full.rebound((top, c_all[:k]), delta=spent_delta(DELTA, i)).theta
            try:
                theta = full.rebound((top, c_all[:k]), delta=spent_delta(DELTA, i),
                                     drop_above=0.5 * float(c_all[:k].abs().max())).theta
            except ValueError:
                theta = math.inf
        rows.append({"task": task, "K": k, "theta": theta, "theta_no_drop": plain,
                     "true_max": float(c_all[k:].abs().max()),
                     "largest_verified": float(c_all[:k].abs().max()), "diag_fwd_per_pair": full.cost.per_pair(),
                     "J": samples})
    return rows


def plot(curve: pd.DataFrame, atp_cost: dict) -> None:
    tasks = list(curve["task"].unique())
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        one = curve[curve["task"] == task]
        for (p, j), part in one.groupby(["p", "J"]):
            diag = max(float(part["diag_fwd_per_pair"].iloc[0]), 0.86 * j)  # a resumed run measured only its captures
            ax.plot(part["K"], part["theta"], "o-", ms=3, label=f"θ stop rule, p={p:g}, J={j} (≈{diag:.0f} fwd/pair)")
            ax.plot(part["K"], part["theta_no_drop"], ":", label="θ without drop")
        part = one[one["p"] == one["p"].iloc[0]]
        base = atp_cost[task] + max(float(part["diag_fwd_per_pair"].iloc[0]), 0.86 * float(part["J"].iloc[0]))
        ax.plot(part["K"], part["true_max"], "k--", label="true largest unverified |c|")
        ax.set(yscale="log", xlabel="verified nodes K (AtP* order)", ylabel="effect", title=task.upper())
        top = ax.secondary_xaxis("top", functions=(lambda k, b=base: k + b, lambda f, b=base: f - b))
        top.set_xlabel("total cost, forward-pass equivalents per pair")
        ax.legend(fontsize=7)
    save(fig, PNG, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="ioi,city,rand")
    ap.add_argument("--configs", default="0.2:100,0.05:300",
                    help="p:J pairs, comma-separated: one sampling of J subsets at inclusion probability p each")
    ap.add_argument("--simulate", default="0.2:100,0.1:300,0.05:300,0.05:1000",
                    help="p:J pairs for the simulated additive subsets only (no patching): θ/truth and coverage")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--curve-max", type=int, default=500)
    ap.add_argument("--curve-step", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="one task, 100 subsets, 20 seeds, short curve")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        args.tasks, args.configs, args.simulate, args.seeds, args.curve_max = "city", "0.2:100", "", 20, 60
    configs = [(float(a), int(b)) for a, b in (c.split(":") for c in args.configs.split(",") if c)]
    simulated = [(float(a), int(b)) for a, b in (c.split(":") for c in args.simulate.split(",") if c)]
    model = atpstar.load_model("default")
    real, cover, curve, atp_cost = [], [], [], {}
    for task in args.tasks.split(","):
        truth = study_truth.load(task)
        pairs = truth.pairs
        t0 = time.perf_counter()
        scores = atpstar.atp(model, pairs, kinds="attn", progress=False)
        atp_seconds = time.perf_counter() - t0
        atp_cost[task] = atpstar.Cost.of(scores).per_pair()
        frame = scores.to_frame()
        frame = frame[np.isfinite(frame["score"])]
        ranking = NodeSet.parse(model, frame["name"].tolist(), pairs.max_len)
        c_all = mean_truth(truth, ranking)
        est = torch.tensor(frame["effect"].to_numpy(), dtype=torch.float64).nan_to_num()
        for p, samples in configs:
            rows, full, seconds = real_rows(task, model, pairs, truth, scores, ranking, samples, p,
                                            sorted({min(100, samples), samples}))
            for r in rows:
                r.update(atp_fwd_per_pair=atp_cost[task], atp_seconds=atp_seconds)
            real += rows
            static = torch.ones(len(ranking), dtype=torch.bool)
            static[torch.isin(_key(ranking), _key(full.nodes))] = False  # sampled nodes move; the others: effect 0
            static[:K0] = False
            cover += coverage_rows(task, c_all, est, static.numpy(), p, samples, args.seeds)
            curve += [{**r, "p": p} for r in curve_rows(task, full, ranking, truth,
                                                      min(args.curve_max, len(ranking) - 1), args.curve_step, samples)]
            pd.DataFrame(real).to_csv(OUT / "diagnostic_cost.csv", index=False)
            pd.DataFrame(cover).to_csv(OUT / "diagnostic_cost_coverage.csv", index=False)
            pd.DataFrame(curve).to_csv(OUT / "diagnostic_cost_curve.csv", index=False)
        for p, samples in simulated:
            if (p, samples) not in configs:
                cover += coverage_rows(task, c_all, est, static.numpy(), p, samples, args.seeds)
                pd.DataFrame(cover).to_csv(OUT / "diagnostic_cost_coverage.csv", index=False)
    plot(pd.DataFrame(curve), atp_cost)
    pd.set_option("display.width", 250)
    print(pd.DataFrame(real).to_string(index=False))
    print(pd.DataFrame(cover).to_string(index=False))


def _key(s: NodeSet) -> torch.Tensor:
    return ((s.kind.long() * 4096 + s.layer) * 65536 + s.unit) * 65536 + s.pos


if __name__ == "__main__":
    main()
