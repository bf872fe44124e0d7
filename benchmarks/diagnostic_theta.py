"""The θ stop rule's re-bounds on SmolLM2 (IOI, CITY, RAND) against the exact truth: one variance bound
shared by every check (docs/diagnostic.md §5) against the former per-check bound, and the rule for
leaving out the subsets of large verified nodes (``drop``).

For each task (the study's 4 pairs, exact per-pair effects of every attention node in
benchmarks/results/study/truth_<task>.npz) and each (p, J): AtP* ranking, top K0 = 10 verified, ONE
diagnostic of the rest (AtP* estimates subtracted; patched by benchmarks/diagnostic_cost.py or here, and
cached under benchmarks/results/study/ckpt/), then the stop rule's path: a check after every 10 further
nodes of the AtP* ranking (K = 10, 20, ..., ``--curve-max``), the verified nodes' exact effects being the
cached truth (what verification returns). At every check: θ of

- ``shared``: :class:`ThetaBelow` (default: variance bound shared by all checks, refreshed at checks 2, 4, 8, ...),
- ``shared_norefresh``: one variance bound at δ/2, never refreshed,
- ``per_check``: the former rule (the whole bound at δ/(i(i+1)) at check i),

each with several ``drop`` rules (which verified nodes' subsets are left out: none; |c| ≥ 0.5 × the largest
verified; |c| ≥ 0.1 × the largest verified (the relative target); the 5 largest verified), and for
comparison the one-shot sub-Gaussian and capped bounds at δ (a single check). θ is divided by the true
largest unverified |c|.

Coverage: the same path on simulated additive subsets of the same nodes (real c, real AtP* estimates,
y_j = Σ_{n∈S_j} q_n (c − ê)(n)), ``--seeds`` seeds, checks every 10 nodes up to K = 100: share of seeds in which
θ ≥ the true largest unverified |c| at every check at once.

Writes benchmarks/results/diagnostic_theta.csv (K = 10, 30, 100), .._curve.csv, .._coverage.csv and
docs/diagnostic_theta.png.

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.diagnostic_theta
       [--tasks ioi,city,rand] [--configs 0.1:300,0.05:300] [--seeds 100] [--curve-max 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar
from atpstar import Budget, NodeSet
from atpstar.diagnostics.bound import rebound_stats
from atpstar.diagnostics.diagnostic import diagnose, memberships
from atpstar.diagnostics.theta import ThetaBelow
from benchmarks.diagnostic_cost import mean_truth
from benchmarks.plotting import pyplot, save
from benchmarks.studylib import truth as study_truth

OUT = Path("benchmarks/results")
PNG = Path("docs/diagnostic_theta.png")
CKPT = Path("benchmarks/results/study/ckpt")
DELTA, K0, STEP, KS = 0.05, 10, 10, (10, 30, 100)


class Rule(ThetaBelow):
    """ThetaBelow with a named drop rule (all depend on the verified effects only, never on the subsets)."""

    def __init__(self, drop_rule: str, **kw):
        super().__init__(relative=0.1, **kw)
        self.drop_rule = drop_rule

    def drop_above(self, verified):
        effect = (verified.effect if hasattr(verified, "effect") else verified[1]).abs().nan_to_num(0.0)
        if self.drop_rule == "none" or not len(effect) or float(effect.max()) == 0:
            return None
        if self.drop_rule == "top5":
            return float(effect.sort(descending=True).values[min(4, len(effect) - 1)])
        return float(self.drop_rule) * float(effect.max())


DROPS = ("none", "0.5", "0.1", "top5")
MODES = {"shared": dict(shared=True, refresh=True), "shared_norefresh": dict(shared=True, refresh=False),
         "per_check": dict(shared=False)}


def path(base, ranking, c_all, samples, p, kmax, mode, drop):
    """θ at the checks K = K0, K0 + STEP, ... (the stop rule's path from one draw ``base``)."""
    rule = Rule(drop, samples=samples, p=p, delta=DELTA, **MODES[mode])
    rule.base = rule.start(dataclasses.replace(base, delta=rule.level(1)))
    out = []
    for i, k in enumerate(range(K0, kmax + 1, STEP), start=1):
        if i == 1:
            d = rule.base
        else:
            d = rule.rebound((ranking.take(slice(0, k)), c_all[:k]), i)
            if d is not None and rule.shared:
                rule.base = d
        out.append((k, math.inf if d is None else d.theta, None if d is None else d.samples))
    return out


def simulated_base(full, c_nodes, seed):
    """``full`` with its subsets replaced by exactly additive ones drawn from ``seed`` (same nodes, p, J)."""
    d = full.design
    members = memberships(len(d.nodes), full.p, seed, 0, len(d.subset_mean))
    subset_mean = members.double() @ (c_nodes * d.presence)
    keep = torch.ones(len(d.nodes), dtype=torch.bool)
    stats = rebound_stats(subset_mean, d.estimate * d.presence, keep, full.p, seed, estimate=d.estimate,
                          bound="capped", scale=1 / d.presence, members=members)
    design = dataclasses.replace(d, subset_mean=subset_mean, members=members)
    return dataclasses.replace(full, stats=stats, design=design, seed=seed, subset_effects=subset_mean[:, None])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="ioi,city,rand")
    ap.add_argument("--configs", default="0.1:300,0.05:300")
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--curve-max", type=int, default=300)
    ap.add_argument("--cover", default="shared:none,per_check:none",
                    help="mode:drop pairs whose coverage over --seeds simulated additive draws is measured")
    args = ap.parse_args()
    torch.set_num_threads(1)
    configs = [(float(a), int(b)) for a, b in (c.split(":") for c in args.configs.split(",") if c)]
    model = atpstar.load_model("default")
    table, curve, cover = [], [], []
    for task in args.tasks.split(","):
        truth = study_truth.load(task)
        pairs = truth.pairs
        scores = atpstar.atp(model, pairs, kinds="attn", progress=False)
        atp_cost = atpstar.Cost.of(scores).per_pair()
        frame = scores.to_frame()
        frame = frame[np.isfinite(frame["score"])]
        ranking = NodeSet.parse(model, frame["name"].tolist(), pairs.max_len)
        c_all = mean_truth(truth, ranking)
        v0 = atpstar.verify(model, pairs, scores, budget=Budget(nodes=K0), progress=False)
        for p, samples in configs:
            t0 = time.perf_counter()
            full = diagnose(model, pairs, v0, estimates=scores, samples=samples, p=p, delta=DELTA, progress=False,
                            checkpoint=CKPT / f"diagnostic_cost_{task}_p{p}.ckpt", bound="capped")
            patched = samples - full.resumed
            fwd = 2 + samples * (full.cost.per_pair() - 2) / patched if patched else math.nan
            timing = _timing(task, p)
            kmax = min(args.curve_max, len(ranking) - 1)
            true_max = {k: float(c_all[k:].abs().max()) for k in range(K0, kmax + 1, STEP)}
            largest = {k: float(c_all[:k].abs().max()) for k in true_max}
            runs = {(m, dr): path(full, ranking, c_all, samples, p, kmax, m, dr) for m in MODES for dr in DROPS}
            for (m, dr), pts in runs.items():
                for k, theta, kept in pts:
                    curve.append({"task": task, "p": p, "J": samples, "mode": m, "drop": dr, "K": k, "theta": theta,
                                  "true_max": true_max[k], "ratio": theta / true_max[k], "subsets_kept": kept,
                                  "largest_verified": largest[k]})
            for k in KS:
                one = full if k == K0 else full.rebound((ranking.take(slice(0, k)), c_all[:k]))
                row = {"task": task, "p": p, "J": samples, "K": k, "true_max": true_max[k],
                       "fwd_per_pair_diag": fwd if math.isfinite(fwd) else timing.get("diag_fwd_per_pair"),
                       "fwd_per_pair_atp": atp_cost, "seconds_diag": timing.get("diag_seconds"),
                       "theta_subgaussian": dataclasses.replace(one.stats, bound="subgaussian").theta(DELTA),
                       "theta_capped": one.stats.theta(DELTA)}
                for (m, dr), pts in runs.items():
                    row[f"theta_{m}_{dr}"] = dict((kk, t) for kk, t, _ in pts)[k]
                for key in [key for key in row if key.startswith("theta_")]:
                    row["ratio" + key[5:]] = row[key] / true_max[k]
                table.append(row)
                print(json.dumps({a: (round(b, 3) if isinstance(b, float) else b) for a, b in row.items()
                                  if a.startswith(("task", "p", "J", "K", "ratio"))}), flush=True)
            c_nodes = mean_truth(truth, full.nodes)
            for m, dr in (c.split(":") for c in args.cover.split(",") if c and args.seeds):
                if True:
                    hits, ratios = 0, []
                    for seed in range(args.seeds):
                        base = simulated_base(full, c_nodes, 1000 + seed)
                        pts = path(base, ranking, c_all, samples, p, 100, m, dr)
                        hits += all(t >= true_max[k] for k, t, _ in pts)
                        ratios.append([t / true_max[k] for k, t, _ in pts])
                    r = np.array(ratios)
                    cover.append({"task": task, "p": p, "J": samples, "mode": m, "drop": dr, "seeds": args.seeds,
                                  "covered_all_checks": hits, "checks": r.shape[1],
                                  **{f"median_ratio_K{k}": float(np.median(r[:, (k - K0) // STEP])) for k in KS}})
                    print(cover[-1], flush=True)
            print(f"{task} p={p}: {time.perf_counter() - t0:.0f}s", flush=True)
            pd.DataFrame(table).to_csv(OUT / "diagnostic_theta.csv", index=False)
            pd.DataFrame(curve).to_csv(OUT / "diagnostic_theta_curve.csv", index=False)
            pd.DataFrame(cover).to_csv(OUT / "diagnostic_theta_coverage.csv", index=False)
    plot(pd.DataFrame(curve))


def replot() -> None:
    """Redraw the figure from benchmarks/results/diagnostic_theta_curve.csv (no model)."""
    plot(pd.read_csv(OUT / "diagnostic_theta_curve.csv", dtype={"drop": str}))


def _timing(task: str, p: float) -> dict:
    """Seconds and forward equivalents of the patching run that made the checkpoint (benchmarks/results/
    diagnostic_theta_timings.jsonl), when this run resumed it."""
    file = OUT / "diagnostic_theta_timings.jsonl"
    if not file.exists():
        return {}
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    return next((r for r in rows if r["task"] == task and r["p"] == p), {})


def plot(curve: pd.DataFrame) -> None:
    """θ of the stop rule's path (shared variance bound, and the former per-check bound) against K."""
    tasks = list(curve["task"].unique())
    fig, axes = pyplot().subplots(1, len(tasks), figsize=(4.4 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        one = curve[(curve["task"] == task)]
        for (p, j), part in one.groupby(["p", "J"]):
            for mode, style in (("shared", "-"), ("per_check", ":")):
                line = part[(part["mode"] == mode) & (part["drop"] == "none")]
                ax.plot(line["K"], line["theta"].clip(upper=1e3), style, label=f"θ {mode}, p={p:g}, J={j}")
        first = one[(one["mode"] == "shared") & (one["drop"] == "none")]
        first = first[first["p"] == first["p"].iloc[0]]
        ax.plot(first["K"], first["true_max"], "k--", label="true largest unverified |c|")
        ax.set(yscale="log", xlabel="verified nodes K (AtP* order; a check every 10)", ylabel="effect (∞ drawn at 10³)",
               title=task.upper())
        top = ax.secondary_xaxis("top", functions=(lambda k, j=one["J"].max(): k + j, lambda f, j=one["J"].max(): f - j))
        top.set_xlabel("diagnostic + verification, fwd-eq per pair (J = 300 designs)", fontsize=7)
        ax.legend(fontsize=6, loc="center right")
    save(fig, PNG, dpi=120)


if __name__ == "__main__":
    replot() if "--replot" in sys.argv else main()
