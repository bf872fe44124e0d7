"""docs/study.md: what was measured, the figures, the cost tables and the claim checks.

The generated part is rewritten on every run; a hand-written section starting with
``## Observations`` already in the file is kept.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .models import DEFAULT_TAG, describe
from .plots import CURVES_LEGEND, SCATTER_LEGEND, caption, geo_mean_over_pairs
from .rankings import ATP_VARIANTS, BASELINES

OBSERVATIONS = "\n## Observations"
TASK_ORDER = ("ioi", "city", "rand")
NON_GRADIENT = ("Subsampling", "Blocks", "Hierarchical", "Iterative", "random")


def load_results(root: Path) -> tuple[pd.DataFrame, dict]:
    """Every cached ``curves_<study>.csv.gz`` (with a ``study`` column; files from before the model
    option get the default model) and ``{study: timings}``."""
    def order(path: Path):  # default model first, then by node groups, then in the tasks' order
        parts = path.name[len("curves_"):-len(".csv.gz")].split("_")
        task = [i for i, t in enumerate(TASK_ORDER) if t in parts]
        return (parts[0] not in TASK_ORDER, "neuronpos" in parts, task[0] if task else 9, path.name)

    paths = sorted(root.glob("curves_*.csv.gz"), key=order)
    if not paths:
        raise SystemExit(f"no cached curves under {root}: run without --docs-only first")
    frames, timings = [], {}
    for path in paths:
        study = re.sub(r"^curves_|\.csv\.gz$", "", path.name)
        frame = pd.read_csv(path)
        if "model" not in frame:
            frame.insert(0, "model", DEFAULT_TAG)
        frames.append(frame.assign(study=study))
        timing = json.loads((root / f"timings_{study}.json").read_text())
        timings[study] = {"model": DEFAULT_TAG, **timing, "task": frame["task"].iloc[0],
                          "groups": sorted(frame["group"].unique())}
    return pd.concat(frames, ignore_index=True), timings


def markdown(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    lines = [header, "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


INDEX = ["setting", "model", "task", "group"]


def cost_at(curves: pd.DataFrame, k: int, value: str = "cost") -> pd.DataFrame:
    """Cost to verify the true top-k per (setting type, model, task, group, kind, method): geometric
    mean over single pairs, and the distribution. ``value="verified"``: the nodes verified only (the
    ranking's quality, without the estimation cost)."""
    single = geo_mean_over_pairs(curves, value)
    single = single[single["k"] == k].assign(setting="single (geo. mean)").rename(columns={"geo": "cost"})
    dist = curves[(curves["setting"] == "dist") & (curves["k"] == k)].assign(setting="distribution")
    dist = dist.drop(columns="cost").rename(columns={value: "cost"}) if value != "cost" else dist
    cols = [*INDEX, "kind", "method", "cost"]
    return pd.concat([single[cols], dist[cols]], ignore_index=True)


def wide(curves: pd.DataFrame, k: int, kind: str = "all", index=INDEX, value: str = "cost") -> pd.DataFrame:
    table = cost_at(curves, k, value)
    return table[table["kind"] == kind].pivot_table(index=index, columns="method", values="cost", sort=False)


def cost_table(curves: pd.DataFrame, k: int, kind: str = "all") -> str:
    table = wide(curves, k, kind)
    if table.empty:
        return f"(no node group has {k} nodes)"
    order = [m for m in ["oracle", *ATP_VARIANTS, *BASELINES, "Iterative", "random"] if m in table.columns]
    table = table[order]
    cells = table.copy().astype(object)
    for m in order:
        cells[m] = ["—" if c != c else f"{c:,.1f}" if m in ("oracle", "AtP") else f"{c:,.0f} ({c / o:.1f}×o, {c / a:.2f}×AtP)"
                    for c, o, a in zip(table[m], table["oracle"], table["AtP"])]
    return markdown(cells.reset_index())


def ratio(table: pd.DataFrame, method: str) -> str:
    """Geometric mean over the table's rows of method's cost / AtP's, with the row count."""
    r = np.exp(np.log(table[method] / table["AtP"]).mean())
    return f"{r:.2f} (geometric mean over {len(table)} settings)"


def claims(curves: pd.DataFrame, ks=(10, 50)) -> str:
    """Counts of (setting, task, group, k) cases where each of the paper's claims holds, for attention
    nodes and final-position neurons; then the QK fix on q/k nodes and GradDrop on neurons."""
    lines = []
    for k in ks:
        table = wide(curves[curves["group"].isin(["attn", "neuron"])], k)
        if table.empty:
            continue
        n = len(table)
        others = [m for m in NON_GRADIENT if m in table.columns]
        beats = (table[["AtP"]].to_numpy() < table[others].min(axis=1).to_numpy()[:, None]).sum()
        counts = {m: (table[m] <= table["AtP"]).sum() for m in ("AtP*", "AtP+QKfix", "AtP+GradDrop")}
        lines.append(f"- top-{k}: AtP cheaper than every non-gradient method in {beats}/{n} cases; AtP* ≤ AtP in "
                     f"{counts['AtP*']}/{n}; QK fix alone ≤ AtP in {counts['AtP+QKfix']}/{n}; GradDrop alone ≤ AtP "
                     f"in {counts['AtP+GradDrop']}/{n}.")
    for kind in ("q", "k"):
        table = wide(curves, 10, kind)
        if len(table):
            lines.append(f"- {kind} nodes, top-10: QK fix / AtP cost ratio {ratio(table, 'AtP+QKfix')}.")
    for group, kind, label in (("neuron", "all", "final-position neurons"),
                               ("neuron_pos", "all", "sampled neurons, every position"),
                               ("neuron_pos", "earlier", "sampled neurons, positions before the last")):
        for k in ks:
            table = wide(curves[curves["group"] == group], k, kind)
            if len(table):
                ranked = wide(curves[curves["group"] == group], k, kind, value="verified")
                others = [m for m in NON_GRADIENT if m in table.columns]
                beats = (table["AtP"] < table[others].min(axis=1)).sum()
                lines.append(f"- {label}, top-{k}: GradDrop / AtP cost ratio {ratio(table, 'AtP+GradDrop')}; "
                             f"AtP* / AtP {ratio(table, 'AtP*')}; GradDrop ≤ AtP in "
                             f"{(table['AtP+GradDrop'] <= table['AtP']).sum()}/{len(table)}; nodes verified "
                             f"alone (ranking quality, estimation cost left out): GradDrop / AtP "
                             f"{ratio(ranked, 'AtP+GradDrop')}; AtP cheaper than every non-gradient method in "
                             f"{beats}/{len(table)}.")
    return "\n".join(lines)


def patch_rates(timings: dict) -> pd.DataFrame:
    """Exact-truth run times per result file: seconds and, where the patch count was saved, patches/s."""
    rows = []
    for study, t in timings.items():
        done = t["truth"]["cached_compute_seconds"]
        for what, key in (("attention nodes", "attention"), ("final-position neurons", "neurons"),
                          ("sampled neurons, every position", "neurons_all_positions")):
            if key in done:
                rate = done["patches"] / done[key] if "patches" in done else float("nan")
                rows.append([t["model"], t["task"], what, f"{done[key]:.0f}",
                             f"{done['patches']:,}" if "patches" in done else "—", "—" if rate != rate else f"{rate:.0f}"])
    return pd.DataFrame(rows, columns=["model", "task", "exact patching of", "seconds", "patches", "patches/s"])


def timing_table(timings: dict) -> str:
    """{study: timings of its run} as three tables: exact truth, estimators, baselines."""
    rows = []
    for study, t in timings.items():
        total = sum(s["seconds"] for s in t.get("settings", []))
        ran = sorted({m for b in t.get("baselines", []) for m in b} - {"setting", "group"})
        rows.append([t["model"], t["task"], ", ".join(t["groups"]), ", ".join(ran), f"{t['backward_ratio']:.2f}",
                     f"{total:.0f}"])
    head = ["model", "task", "node groups", "joint-patching baselines run", "backward/forward ratio",
            "all methods, all settings (s)"]
    est = pd.concat([pd.DataFrame(t.get("estimates", [])).assign(model=t["model"], task=t["task"], groups=", ".join(t["groups"]))
                     for t in timings.values()])
    base = pd.concat([pd.DataFrame(t.get("baselines", [])).assign(model=t["model"], task=t["task"])
                      for t in timings.values()])
    est = est.groupby(["model", "task", "groups"], sort=False).mean(numeric_only=True).round(2)
    base = base.groupby(["model", "task", "group"], sort=False).mean(numeric_only=True).round(1)
    return "\n\n".join([markdown(patch_rates(timings)), markdown(pd.DataFrame(rows, columns=head)),
                        "Estimation seconds per setting (mean; AtP variants over the node kinds of the run):\n\n"
                        + markdown(est.reset_index()),
                        "Baseline seconds per setting and node group (mean):\n\n" + markdown(base.reset_index())])


def intro(curves: pd.DataFrame, timings: dict, args) -> str:
    options = "; ".join(f"{label}: {name} {opts}" for label, (name, opts) in BASELINES.items())
    ratios = ", ".join(f"{t['model']} {t['task']} {t['backward_ratio']:.2f}" for t in timings.values())
    models = "; ".join(f"**{m}**: {describe(m)}" for m in curves["model"].unique())
    groups = curves.groupby("model", sort=False)["group"].unique()
    covered = "; ".join(f"{m}: {', '.join(GROUP_TEXT[g] for g in gs)}" for m, gs in groups.items())
    single = curves[curves["setting"] != "dist"].groupby(["model", "task", "group"], sort=False)["setting"].nunique()
    pairs = "; ".join(f"{m} {t.upper()} {g}: {n}" for (m, t, g), n in single.items())
    return (
        "# The cost of verified recall: AtP* against the paper's baselines\n\n"
        f"Models (float32, one CPU thread on a 2-core machine shared with other jobs): {models}. "
        f"Tasks: {', '.join(t.upper() for t in curves['task'].unique())}, prompt pairs drawn with seed {args.seed}; "
        f"each pair alone (the single-pair setting) and all of a task's pairs together (the distribution). "
        f"Pairs per model, task and node group: {pairs}. Ground truth by exact activation patching, per model: {covered}; cached in "
        "`benchmarks/results/study/`. Cost unit: forward passes per prompt pair — a method's estimation cost "
        "plus one per node verified in its order; the oracle's cost to verify the true top-k is k. "
        f"Backward/forward time ratio measured on this machine: {ratios}. Baselines: {options}; "
        "Iterative (distribution only) reads the cached exact per-pair effects instead of re-patching.\n\n"
        "Regenerate (the truth is cached; `--recompute` recomputes it):\n\n"
        "```bash\nOMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.study                      # SmolLM2: attention + final-position neurons\n"
        "OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.study --groups neuron_pos --baselines Blocks,Hierarchical\n"
        "OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.study --model gemma3-270m --groups attn --pairs 2 "
        "--baselines Blocks,Hierarchical\n"
        "PYTHONPATH=src python -m benchmarks.study --docs-only                             # this page, from the cached curves\n```\n"
    )


GROUP_TEXT = {"attn": "every attention node (q, k, v, head at every layer and position)",
              "neuron": "every neuron at the final position",
              "neuron_pos": "sampled neurons at every position"}


def why_neurons(curves: pd.DataFrame, timings: dict) -> str:
    pos = [t for t in timings.values() if "neuron_pos" in t["groups"]]
    text = (
        "Every neuron at every position is out of reach on one CPU thread: SmolLM2 has 46,080 neurons per "
        "position, and a neuron patched at an early position changes every later position, so the patch "
        "recomputes the rest of the sequence. **Final-position neurons** (every layer, every unit) are cheap "
        "(only the last position is recomputed) and carry the direct effects, but there GradDrop has "
        "little to cancel against. **Sampled neurons at every position** test the earlier positions: ")
    if not pos:
        return text + "not computed yet (`--groups neuron_pos`)."
    t, sample = pos[0]["truth"]["cached_compute_seconds"], pos[0]["sample"]
    rate = t["patches"] / t["neurons_all_positions"]
    full_hours = sample["n_layers"] * sample["d_mlp"] * sum(sample["lengths"]) / rate / 3600
    return text + (
        f"{len(sample['layers'])} layers evenly spread over the depth ({', '.join(map(str, sample['layers']))} of "
        f"{sample['n_layers']}) × {sample['units_per_layer']} randomly chosen units per layer (a fresh sample per "
        f"layer, seed {sample['seed']}) × every position × every pair: "
        f"{len(sample['layers']) * sample['units_per_layer']} neurons per position (how the size was chosen: "
        f"see Observations). Measured over the whole run: {rate:.0f} patches/s on {pos[0]['task'].upper()} (table "
        f"below); at that rate every neuron at every position of the same {len(sample['lengths'])} pairs would "
        f"take about {full_hours:.0f} hours for that task alone. The recall curves of this group rank the sampled "
        "neurons among themselves (the methods' scores of other neurons are ignored), for all of them and for "
        "those before the final position (`earlier`).")


def figure_order(name: str) -> tuple:
    """Figures in reading order: the default model first, then tasks as in TASK_ORDER, groups, single before dist."""
    parts = name.removesuffix(".png").split("_")[1:]
    task = next((i for i, t in enumerate(TASK_ORDER) if t in parts), 9)
    model = "" if parts[0] in TASK_ORDER else parts[0]
    return (model, task, "neuronpos" in parts or "pos" in parts, "dist" in parts, name)


def figure(name: str, folder: str) -> str:
    """A figure and its caption (in italics, under it)."""
    return f"![{name}]({folder}/{name})\n\n*{caption(name)}*"


def write(curves: pd.DataFrame, timings: dict, args) -> None:
    figures = sorted((p.name for p in args.figures.glob("*.png")), key=figure_order)
    rel = args.figures.name
    per_model = "\n\n".join(f"### {m}\n\n{claims(curves[curves['model'] == m])}" for m in curves["model"].unique())
    sections = [
        ("Which neurons", why_neurons(curves, timings)),
        ("Timings", timing_table(timings)),
        ("Figures", "\n\n".join([CURVES_LEGEND, *(figure(f, rel) for f in figures if f.startswith("curves"))])),
        ("Cost to verify the true top-10 (all nodes of each group)", cost_table(curves, 10)),
        ("Cost to verify the true top-50", cost_table(curves, 50)),
        ("Sampled neurons before the final position: cost to verify the true top-10",
         cost_table(curves, 10, "earlier")),
        ("Sampled neurons before the final position: cost to verify the true top-50",
         cost_table(curves, 50, "earlier")),
        ("Claim checks (computed, per model)", per_model),
        ("Estimate vs exact", "\n\n".join([SCATTER_LEGEND, *(figure(f, rel) for f in figures if f.startswith("scatter"))])),
    ]
    text = intro(curves, timings, args) + "".join(f"\n## {title}\n\n{body}\n" for title, body in sections)
    path = args.out / "study.md"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    kept = old[old.index(OBSERVATIONS):] if OBSERVATIONS in old else ""
    path.write_text(text + kept, encoding="utf-8")
