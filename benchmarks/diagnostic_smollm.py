"""The false-negative diagnostic on SmolLM2 IOI, against the exact truth of every attention node.

For one IOI pair of the study (benchmarks/results/study/truth_ioi.npz: exact effects of every q, k,
v, head node), rank the attention nodes by AtP*, verify the top K for several K, and run the
diagnostic on the rest (AtP* estimates subtracted). Reports θ (sub-Gaussian and normal bounds, from
the same subsets) against K and against the number of subsets J, next to the TRUE largest
unverified effect, and how additive the subsets really were (rms of I(S) − Σ_{n∈S} c(n)).

Writes benchmarks/results/diagnostic_smollm.csv and docs/diagnostic_smollm.png, and prints a
Markdown table for docs/diagnostic.md.

Usage: OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.diagnostic_smollm
       [--pair 0] [--ks 5,20,100,1000] [--samples 1000] [--p 0.02] [--additivity]
(about 6 minutes on one thread; reruns resume from the checkpoints under benchmarks/results/study/ckpt)
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar
from atpstar import Budget, NodeSet
from atpstar.diagnostics.bound import min_samples
from atpstar.diagnostics.diagnostic import diagnose, memberships
from atpstar.types import ALL_KINDS
from benchmarks.plotting import pyplot, save
from benchmarks.studylib import truth as study_truth

CSV = Path("benchmarks/results/diagnostic_smollm.csv")
PNG = Path("docs/diagnostic_smollm.png")
CKPT = Path("benchmarks/results/study/ckpt")
DELTA = 0.05


def true_effects(truth, pair: int, nodes: NodeSet) -> torch.Tensor:
    """(N,) exact effect on pair ``pair`` of nodes given in that pair's own positions."""
    t_all = truth.pairs.max_len
    offset = t_all - len(truth.pairs.clean[pair])
    out = torch.empty(len(nodes), dtype=torch.float64)
    for k in nodes.kind.unique().tolist():
        sel = nodes.kind == k
        table = torch.from_numpy(truth.per_pair(ALL_KINDS[k].value)[pair]).double()
        out[sel] = table[nodes.layer[sel], nodes.unit[sel], nodes.pos[sel] + offset]
    return out.nan_to_num()


def per_subset(total: float, d) -> float:
    patched = d.samples - d.resumed
    return total / patched if patched else float("nan")


def rank_of(ranking: pd.DataFrame, nodes: NodeSet, i: int) -> int:
    """0-based rank in ``ranking`` of node ``i`` of ``nodes``."""
    name = nodes.take(slice(i, i + 1)).to_nodes()[0].name
    return int(ranking.index[ranking["name"] == name][0])


def one_k(model, pairs, truth, pair, ranking, estimates, k, samples, p, grid):
    """Verify the top k, diagnose the rest; rows for every J in ``grid`` (prefixes of the same subsets)."""
    v = atpstar.verify(model, pairs, ranking, budget=Budget(nodes=k), progress=False)
    ckpt = CKPT / f"diagnostic_smollm_k{k}.ckpt"
    full = diagnose(model, pairs, v, estimates=estimates, samples=samples, p=p, delta=DELTA, checkpoint=ckpt,
                    progress=True)
    every = NodeSet.every(model, "attn", pairs.max_len)
    c_all = true_effects(truth, pair, every)
    ids = lambda s: ((s.kind * 100 + s.layer) * 100 + s.unit) * 1000 + s.pos  # noqa: E731
    unverified = ~torch.isin(ids(every), ids(v.nodes))
    c_left = c_all[unverified]
    c_nodes = true_effects(truth, pair, full.nodes)
    members = memberships(len(full.nodes), p, 0, 0, samples)
    error = full.subset_effects[:, 0] - members.double() @ c_nodes
    rows = []
    for j in grid:
        d = full if j == samples else diagnose(model, pairs, v, estimates=estimates, samples=j, p=p, delta=DELTA,
                                                checkpoint=ckpt, progress=False, bound="normal")
        normal = dataclasses.replace(d.stats, bound="normal").theta(DELTA)
        sub = dataclasses.replace(d.stats, bound="subgaussian").theta(DELTA) if j >= min_samples(p, DELTA) else float("nan")
        top = d.suspects["name"].iloc[0]
        rows.append({
            "K": k, "J": j, "p": p, "unverified": int(unverified.sum()), "sampled": len(d.nodes),
            "true_argmax_rank": rank_of(ranking, every.take(unverified), int(c_left.abs().argmax())),
            "true_max": float(c_left.abs().max()), "true_argmax": every.take(unverified).take(
                slice(int(c_left.abs().argmax()), int(c_left.abs().argmax()) + 1)).to_nodes()[0].name,
            "theta_subgaussian": sub, "theta_normal": normal, "top_suspect": top,
            "top_suspect_true": float(c_nodes[[n.name for n in d.nodes.to_nodes()].index(top)]),
            "max_estimate": float(d.stats.effect.abs().nan_to_num(0.0).max()), "unobserved": d.stats.unobserved,
            "sd_y": d.stats.variance ** 0.5,
            "additivity_rms": float(error[:j].pow(2).mean().sqrt()), "sd_I": float(full.subset_effects[:j, 0].std()),
            # cost of the subsets this run patched (none when resumed from the checkpoint)
            "patched": samples - full.resumed, "forward_per_subset": per_subset(full.cost.per_pair() - 2, full),
            "seconds_per_subset": per_subset(full.cost.seconds, full),
        })
    return rows


def additivity(model, pairs, truth, pair: int, ranking: pd.DataFrame, ks=(0, 20, 100),
               ps=(0.005, 0.02, 0.05, 0.2), n: int = 30) -> pd.DataFrame:
    """How additive are joint patches of random subsets of the nodes outside the true top K?
    rms of I(S) − Σ_{n∈S} c(n) against the spread of I(S), ``n`` subsets per (K, p)."""
    from atpstar.substrate.joint import JointPatcher

    every = NodeSet.every(model, "attn", pairs.max_len)
    c = true_effects(truth, pair, every)
    order = torch.argsort(c.abs(), descending=True)
    patcher = JointPatcher(model, pairs, kinds="attn")
    rows = []
    for k in ks:
        left = order[k:]
        nodes, c_left = every.take(left), c[left]
        for p in ps:
            members = memberships(len(nodes), p, 0, 0, n)
            joint = patcher.effects(nodes, members)[:, 0]
            error = joint - members.double() @ c_left
            rows.append({"K": k, "p": p, "subset_size": p * len(nodes), "sd_I": float(joint.std()),
                         "rms_error": float(error.pow(2).mean().sqrt()), "mean_error": float(error.mean())})
    return pd.DataFrame(rows)


def plot(frame: pd.DataFrame, k_samples: int, samples: int) -> None:
    fig, axes = pyplot().subplots(1, 2, figsize=(10, 3.8))
    last = frame[frame["J"] == samples]
    ax = axes[0]
    ax.plot(last["K"], last["theta_subgaussian"], "o-", label="θ sub-Gaussian (finite-sample)")
    ax.plot(last["K"], last["theta_normal"], "s-", label="θ normal (asymptotic)")
    ax.plot(last["K"], last["true_max"], "k^--", label="true largest unverified |c|")
    ax.set(xscale="log", yscale="log", xlabel="verified top-K AtP* attention nodes", ylabel="effect (logit diff)",
           title=f"θ at δ={DELTA} vs K (J={samples} subsets)")
    ax.legend(fontsize=8)
    ax = axes[1]
    one = frame[frame["K"] == k_samples]
    ax.plot(one["J"], one["theta_subgaussian"], "o-", label="θ sub-Gaussian")
    ax.plot(one["J"], one["theta_normal"], "s-", label="θ normal")
    ax.plot(one["J"], one["true_max"], "k^--", label="true largest unverified |c|")
    ax.set(xscale="log", yscale="log", xlabel="subsets J", title=f"θ vs subsets (K={k_samples})")
    ax.legend(fontsize=8)
    save(fig, PNG, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", type=int, default=0)
    parser.add_argument("--ks", default="5,20,100,1000")
    parser.add_argument("--samples", type=int, default=1000, help="subsets per K")
    parser.add_argument("--k-samples", type=int, default=20, help="the K whose θ is also shown against J")
    parser.add_argument("--max-samples", type=int, default=2000, help="J range for that K")
    parser.add_argument("--p", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--additivity", action="store_true", help="also measure additivity vs subset size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = atpstar.load_model("default")
    truth = study_truth.load("ioi")
    pairs = truth.pairs.select([args.pair])
    estimates = atpstar.atp(model, pairs, kinds="attn", progress=False)  # AtP*
    ranking = estimates.to_frame()
    if args.additivity:
        print(additivity(model, pairs, truth, args.pair, ranking).to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    ks = [int(k) for k in args.ks.split(",")]
    rows = []
    for k in ks:
        samples = args.max_samples if k == args.k_samples else args.samples
        grid = sorted({j for j in (samples // 4, samples // 2, args.samples, samples) if j <= samples})
        rows += one_k(model, pairs, truth, args.pair, ranking, estimates, k, samples, args.p, grid)
        print(pd.DataFrame(rows).tail(len(grid)).to_string(index=False), flush=True)
    frame = pd.DataFrame(rows)
    CSV.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(CSV, index=False, float_format="%.6g")
    plot(frame, args.k_samples, args.samples)
    cols = ["K", "J", "true_max", "true_argmax", "true_argmax_rank", "theta_subgaussian", "theta_normal",
            "top_suspect", "top_suspect_true", "unobserved", "additivity_rms", "sd_I", "sd_y", "seconds_per_subset"]
    print(frame[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
