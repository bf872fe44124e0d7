"""docs/study.md: what was measured, the figures, the cost tables and the claim checks.

The generated part is rewritten on every run; a hand-written section starting with
``## Observations`` already in the file is kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .plots import geo_mean_over_pairs
from .rankings import ATP_VARIANTS, BASELINES

OBSERVATIONS = "\n## Observations"
NON_GRADIENT = ("Subsampling", "Blocks", "Hierarchical", "Iterative", "random")


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def cost_at(curves: pd.DataFrame, k: int) -> pd.DataFrame:
    """Cost to verify the true top-k per (setting type, task, group, kind, method): geometric mean over
    single pairs, and the distribution."""
    single = geo_mean_over_pairs(curves)
    single = single[single["k"] == k].assign(setting="single (geo. mean)").rename(columns={"geo": "cost"})
    dist = curves[(curves["setting"] == "dist") & (curves["k"] == k)].assign(setting="distribution")
    cols = ["setting", "task", "group", "kind", "method", "cost"]
    return pd.concat([single[cols], dist[cols]], ignore_index=True)


def cost_table(curves: pd.DataFrame, k: int, kind: str = "all") -> str:
    table = cost_at(curves, k)
    table = table[table["kind"] == kind]
    if table.empty:
        return f"(no node group has {k} nodes)"
    wide = table.pivot_table(index=["setting", "task", "group"], columns="method", values="cost", sort=False)
    order = [m for m in ["oracle", *ATP_VARIANTS, *BASELINES, "Iterative", "random"] if m in wide.columns]
    wide = wide[order]
    cells = wide.copy().astype(object)
    for m in order:
        cells[m] = ["—" if c != c else f"{c:,.1f}" if m in ("oracle", "AtP") else f"{c:,.0f} ({c / o:.1f}×o, {c / a:.2f}×AtP)"
                    for c, o, a in zip(wide[m], wide["oracle"], wide["AtP"])]
    return markdown(cells.reset_index())


def claims(curves: pd.DataFrame, ks=(10, 50)) -> str:
    """Counts of (setting, task, group, k) cases where each of the paper's claims holds here."""
    lines = []
    for k in ks:
        table = cost_at(curves, k)
        table = table[table["kind"] == "all"].pivot_table(index=["setting", "task", "group"], columns="method",
                                                             values="cost", sort=False)
        n = len(table)
        others = [m for m in NON_GRADIENT if m in table.columns]
        beats = (table[["AtP"]].to_numpy() < table[others].min(axis=1).to_numpy()[:, None]).sum()
        star = (table["AtP*"] <= table["AtP"]).sum()
        qk = (table["AtP+QKfix"] <= table["AtP"]).sum()
        gd = (table["AtP+GradDrop"] <= table["AtP"]).sum()
        lines.append(f"- top-{k}: AtP cheaper than every non-gradient method in {beats}/{n} cases; AtP* ≤ AtP in "
                     f"{star}/{n}; QK fix alone ≤ AtP in {qk}/{n}; GradDrop alone ≤ AtP in {gd}/{n}.")
    for kind in ("q", "k"):
        table = cost_at(curves, 10)
        table = table[table["kind"] == kind].pivot_table(index=["setting", "task"], columns="method", values="cost")
        if len(table):
            ratio = np.exp(np.log(table["AtP+QKfix"] / table["AtP"]).mean())
            lines.append(f"- {kind} nodes, top-10: QK fix / AtP cost ratio, geometric mean over {len(table)} "
                         f"settings: {ratio:.2f}.")
    table = cost_at(curves, 10)
    table = table[table["group"] == "neuron"].pivot_table(index=["setting", "task"], columns="method", values="cost")
    if len(table):
        ratio = np.exp(np.log(table["AtP+GradDrop"] / table["AtP"]).mean())
        lines.append(f"- neurons, top-10: GradDrop / AtP cost ratio, geometric mean over {len(table)} settings: {ratio:.2f}.")
    return "\n".join(lines)


def timing_table(timings: dict) -> str:
    """{task: timings of that task's run} as three tables: exact truth, estimators, baselines."""
    rows = []
    for task, t in timings.items():
        done = t["truth"]["cached_compute_seconds"]
        total = sum(s["seconds"] for s in t.get("settings", []))
        rows.append([task, f"{done.get('attention', float('nan')):.0f}", f"{done.get('neurons', float('nan')):.0f}",
                     f"{t['backward_ratio']:.2f}", f"{total:.0f}"])
    head = ["task", "exact patching, attention (s)", "exact patching, neurons (s)", "backward/forward ratio",
            "all methods, all settings (s)"]
    est = pd.concat([pd.DataFrame(t.get("estimates", [])).assign(task=task) for task, t in timings.items()])
    base = pd.concat([pd.DataFrame(t.get("baselines", [])).assign(task=task) for task, t in timings.items()])
    est = est.groupby("task", sort=False).mean(numeric_only=True).round(2)
    base = base.groupby(["task", "group"], sort=False).mean(numeric_only=True).round(1)
    return "\n\n".join([markdown(pd.DataFrame(rows, columns=head)),
                        "Estimation seconds per setting (mean; AtP variants over every node kind):\n\n" + markdown(est.reset_index()),
                        "Baseline seconds per setting and node group (mean):\n\n" + markdown(base.reset_index())])


def write(curves: pd.DataFrame, timings: dict, args) -> None:
    figures = sorted(p.name for p in args.figures.glob("*.png"))
    rel = args.figures.name
    options = "; ".join(f"{label}: {name} {opts}" for label, (name, opts) in BASELINES.items())
    ratio_text = ", ".join(f"{t} {v['backward_ratio']:.2f}" for t, v in timings.items())
    intro = (
        "# The cost of verified recall: AtP* against the paper's baselines\n\n"
        f"Model: SmolLM2-135M-Instruct (30 layers, 9 heads, 3 kv heads, d_mlp 1536), float32, one CPU thread. "
        f"Tasks: {', '.join(t.upper() for t in timings)}; {args.pairs} prompt pairs each (seed {args.seed}): "
        "each pair alone (the single-pair setting) and all of them together (the distribution). "
        "Ground truth: exact activation patching of **every attention node** (q, k, v, head at every layer and "
        "position) and of **every neuron at the final position** (30 × 1536 per pair), cached in "
        "`benchmarks/results/study/`. Cost unit: forward passes per prompt pair — a method's estimation cost "
        "plus one per node verified in its order; the oracle's cost to verify the true top-k is k. "
        f"Backward/forward time ratio measured on this machine: {ratio_text}. Baselines: {options}; "
        "Iterative (distribution only) reads the cached exact per-pair effects instead of re-patching. "
        "Regenerate: `OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/study.py` (`--quick`: seconds).\n"
    )
    sections = [
        ("Why these neurons", (
            "Exhaustive neuron patching costs 46,080 patches per position per pair (about an hour per pair on this "
            "CPU for all positions). The final position is where the metric is read, so its neurons carry the direct "
            "effects and are cheap to patch exactly (only one position is recomputed). What this subset can show: "
            "how well each method ranks neurons that act at the answer position. What it cannot show: neurons at "
            "earlier positions (e.g. IOI's subject tokens), whose effects reach the answer through attention — "
            "the cases where GradDrop's cancellation fix would matter most.")),
        ("Timings", timing_table(timings)),
        ("Figures", "\n\n".join(f"![{f}]({rel}/{f})" for f in figures if f.startswith("curves"))),
        ("Cost to verify the true top-10 (all attention nodes / all final-position neurons)", cost_table(curves, 10)),
        ("Cost to verify the true top-50", cost_table(curves, 50)),
        ("Claim checks (computed)", claims(curves)),
        ("Estimate vs exact", "\n\n".join(f"![{f}]({rel}/{f})" for f in figures if f.startswith("scatter"))),
    ]
    text = intro + "".join(f"\n## {title}\n\n{body}\n" for title, body in sections)
    path = args.out / "study.md"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = old[old.index(OBSERVATIONS):] if OBSERVATIONS in old else ""
    path.write_text(text + kept, encoding="utf-8")
