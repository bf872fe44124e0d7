"""Figures of the study (matplotlib, PNG): cost-of-verified-recall curves and estimate-vs-exact scatters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.plotting import pyplot, save

from .frames import KEY

plt = pyplot()

# Paul Tol's "muted" palette (distinguishable with the common colour-vision deficiencies) plus black and grey;
# related methods also differ by line style and marker, so no pair of lines relies on hue alone.
STYLE = {  # method: (colour, line style, marker)
    "oracle": ("black", "--", None), "random": ("#888888", ":", None),
    "AtP": ("#332288", "-", "o"), "AtP+QKfix": ("#88CCEE", "-", "s"), "AtP+GradDrop": ("#AA4499", "-", "^"),
    "AtP*": ("#CC6677", "-", "D"), "Subsampling": ("#117733", "-.", "v"), "Blocks": ("#DDCC77", "-.", "P"),
    "Hierarchical": ("#999933", "-.", "X"), "Iterative": ("#882255", ":", "*"),
}
COLUMNS = 2
"""Panels per row: each panel stays legible when the docs show the figure at page width."""
FONT = {"title": 13, "panel": 12, "label": 11, "ticks": 10, "legend": 10}
FN_TOP, FN_RANK = 20, 100
PANEL = {("neuron", "all"): "neurons (final pos.)", ("neuron_pos", "all"): "sampled neurons, every pos.",
         ("neuron_pos", "earlier"): "sampled neurons, earlier pos."}


def geo_mean_over_pairs(curves: pd.DataFrame, value: str = "cost") -> pd.DataFrame:
    """Single-pair settings: geometric mean, min and max of the cost over pairs, per (study, model, task,
    group, kind, method, k); ``study`` names the result file the rows came from."""
    single = curves[curves["setting"] != "dist"]
    keys = ["study", "model", "task", "group", "kind", "method", "k"]
    log = np.log(single[value].clip(lower=1e-9))
    out = single.assign(log=log).groupby(keys, sort=False).agg(
        geo=("log", "mean"), lo=(value, "min"), hi=(value, "max"), pairs=(value, "size")).reset_index()
    out["geo"] = np.exp(out["geo"])
    return out


def curves(table: pd.DataFrame, out: Path) -> list[Path]:
    """One figure per result file (model, task, node groups) and setting type (single pairs: geometric
    mean with min–max band; distribution), named ``curves_<study>_<single|dist>.png``: two panels per row,
    one legend below them all."""
    paths = []
    single = geo_mean_over_pairs(table)
    dist = table[table["setting"] == "dist"].rename(columns={"cost": "geo"})
    for label, data in (("single", single), ("dist", dist)):
        for study, part in data.groupby("study", sort=False):
            panels = list(part[["group", "kind"]].drop_duplicates().itertuples(index=False))
            fig, axes = _grid(len(panels))
            for ax, (group, kind) in zip(axes, panels):
                _curve_panel(ax, part[(part["group"] == group) & (part["kind"] == kind)],
                             PANEL.get((group, kind), f"{group}: {kind}"))
            for ax in axes[len(panels):]:
                ax.set_visible(False)
            handles = {h.get_label(): h for ax in axes for h in ax.get_lines() if not h.get_label().startswith("_")}
            fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=FONT["legend"],
                       frameon=False)
            what = "geometric mean over single pairs (band: min–max)" if label == "single" else "all pairs together"
            model, task = part["model"].iloc[0], part["task"].iloc[0]
            fig.suptitle(f"{model} {task.upper()}: cost of verified recall, {what}", fontsize=FONT["title"])
            rows = -(-len(panels) // COLUMNS)
            path = out / f"curves_{study}_{label}.png"
            save(fig, path, dpi=100, rect=(0, 0.8 / (3.2 * rows + 1.3), 1, 1))
            paths.append(path)
    return paths


def _grid(n_panels: int):
    """A figure of ``COLUMNS`` panels per row (room below for the legend) and its axes, flattened."""
    rows = -(-n_panels // COLUMNS)
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(9.0, 3.2 * rows + 1.3), squeeze=False)
    return fig, list(axes.flat)


def _curve_panel(ax, panel: pd.DataFrame, title: str) -> None:
    """One panel: each method's cost against the top-k it verified (log–log), band min–max over pairs."""
    for method, line in panel.groupby("method", sort=False):
        colour, style, marker = STYLE.get(method, ("gray", "-", None))
        ax.plot(line["k"], line["geo"], style, color=colour, label=method, lw=2.2 if method == "AtP*" else 1.6,
                marker=marker, markevery=0.12, markersize=5)
        if "lo" in line and line["pairs"].max() > 1:
            ax.fill_between(line["k"], line["lo"], line["hi"], color=colour, alpha=0.10, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=FONT["panel"])
    ax.set_xlabel("true top-k verified", fontsize=FONT["label"])
    ax.set_ylabel("forward passes per pair", fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["ticks"])
    ax.grid(alpha=0.3, which="both", lw=0.4)


CURVES_LEGEND = ("Each panel: the cost (forward passes per pair, log scale) of verifying a method's ranking in "
                 "order until the true top-k of that node group are all verified, against k (log scale); lower is "
                 "better, and the dashed black oracle (cost k) is the floor. *Single pairs*: each pair on its own, "
                 "lines the geometric mean over pairs, bands the range; *all pairs together*: the distribution of "
                 "the task's pairs as one setting.")
"""Said once above the curve figures; each figure's own caption says what it shows."""
SCATTER_LEGEND = (f"Estimate (y) against exact effect (x) on pair 0, AtP left and AtP* right, one row per node kind; "
                  f"on the grey diagonal the estimate is exact; circled: nodes of the true top-{FN_TOP} that the "
                  f"method ranks below {FN_RANK} (its false negatives).")


def caption(name: str) -> str:
    """The caption docs/study.md prints under figure ``name`` (a file written by :func:`curves` or
    :func:`scatter`): which model, task, node groups and setting it shows."""
    stem = name.removesuffix(".png")
    kind, _, rest = stem.partition("_")
    model, rest = (rest.split("_", 1) if rest.split("_", 1)[0] not in ("ioi", "city", "rand") else ("SmolLM2-135M", rest))
    model = {"gemma3-270m": "Gemma 3 270M"}.get(model, model)
    task, _, rest = rest.partition("_")
    if kind == "curves":
        setting = "single pairs" if rest.endswith("single") else "all pairs together"
        panels = "sampled neurons" if rest.startswith("neuronpos") else "one panel per node group"
        return f"{model}, {task.upper()}, {setting}: cost of verified recall ({panels})."
    group = rest.removeprefix("pair0_")
    what = {"attn": "attention nodes (q, k, v, head)", "neuron": "neurons at the final position",
            "neuron_pos": "sampled neurons at every position"}.get(group, group)
    return f"{model}, {task.upper()}, pair 0, {what}: AtP and AtP* estimates against the exact effects."


def scatter(exact: pd.DataFrame, atp: dict, task: str, setting: str, group: str, out: Path) -> Path:
    """Estimate vs exact effect, one row per node kind, AtP left and AtP* right; false negatives (true top-20
    of the group, ranked below 100 among the group's nodes by the method) circled."""
    kinds = list(dict.fromkeys(exact["kind"]))
    fig, axes = plt.subplots(len(kinds), 2, figsize=(9.0, 3.4 * len(kinds) + 0.8), squeeze=False)
    exact = exact.assign(top=exact["score"].rank(ascending=False, method="first") <= FN_TOP)
    for col, method in enumerate(("AtP", "AtP*")):
        est = atp[method][0].merge(exact[KEY], on=KEY)  # the group's nodes only, in the method's order
        ranks = est.assign(rank=np.arange(1, len(est) + 1))
        merged = exact.merge(ranks[KEY + ["effect", "rank"]], on=KEY, suffixes=("", "_est"))
        for row, kind in enumerate(kinds):
            ax = axes[row][col]
            part = merged[merged["kind"] == kind]
            ax.scatter(part["effect"], part["effect_est"], s=10, alpha=0.5, color="#332288", lw=0)
            fn = part[part["top"] & (part["rank"] > FN_RANK)]
            ax.scatter(fn["effect"], fn["effect_est"], s=60, facecolors="none", edgecolors="#CC6677", lw=1.6,
                       label=f"false negatives ({len(fn)})")
            lim = float(np.nanmax(np.abs(part[["effect", "effect_est"]].to_numpy()))) * 1.05 or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="gray", lw=0.8)
            ax.set_title(f"{method}: {kind}", fontsize=FONT["panel"])
            ax.set_xlabel("exact effect", fontsize=FONT["label"])
            ax.set_ylabel("estimate", fontsize=FONT["label"])
            ax.tick_params(labelsize=FONT["ticks"])
            ax.legend(fontsize=FONT["legend"], loc="upper left")
    fig.suptitle(f"{task.upper()} {setting}: estimate vs exact (circled: true top-{FN_TOP} ranked below {FN_RANK})",
                 fontsize=FONT["title"])
    path = out / f"scatter_{task}_{setting}_{group}.png"
    save(fig, path, dpi=100, rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    return path
