"""Figures of the study (matplotlib, PNG): cost-of-verified-recall curves and estimate-vs-exact scatters."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .frames import KEY  # noqa: E402

STYLE = {  # method: (colour, line style)
    "oracle": ("black", "--"), "AtP": ("tab:blue", "-"), "AtP+QKfix": ("tab:cyan", "-"),
    "AtP+GradDrop": ("tab:purple", "-"), "AtP*": ("tab:red", "-"), "Subsampling": ("tab:green", "-."),
    "Blocks": ("tab:olive", "-."), "Hierarchical": ("tab:brown", "-."), "Iterative": ("tab:pink", ":"),
    "random": ("gray", ":"),
}
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
    mean with min–max band; distribution), named ``curves_<study>_<single|dist>.png``."""
    paths = []
    single = geo_mean_over_pairs(table)
    dist = table[table["setting"] == "dist"].rename(columns={"cost": "geo"})
    for label, data in (("single", single), ("dist", dist)):
        for study, part in data.groupby("study", sort=False):
            panels = list(part[["group", "kind"]].drop_duplicates().itertuples(index=False))
            fig, axes = plt.subplots(1, len(panels), figsize=(max(3.2 * len(panels), 8.0), 3.3), squeeze=False)
            for ax, (group, kind) in zip(axes[0], panels):
                panel = part[(part["group"] == group) & (part["kind"] == kind)]
                for method, line in panel.groupby("method", sort=False):
                    colour, style = STYLE.get(method, ("gray", "-"))
                    ax.plot(line["k"], line["geo"], style, color=colour, label=method, lw=1.4)
                    if "lo" in line and line["pairs"].max() > 1:
                        ax.fill_between(line["k"], line["lo"], line["hi"], color=colour, alpha=0.08, lw=0)
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.set_title(PANEL.get((group, kind), f"{group}: {kind}"), fontsize=9)
                ax.set_xlabel("true top-k verified", fontsize=8)
                ax.grid(alpha=0.3, which="both", lw=0.4)
            axes[0][0].set_ylabel("cost (forward passes per pair)", fontsize=8)
            axes[0][-1].legend(fontsize=6, loc="lower right")
            what = "geometric mean over single pairs (band: min–max)" if label == "single" else "distribution of all pairs"
            model, task = part["model"].iloc[0], part["task"].iloc[0]
            fig.suptitle(f"{model} {task.upper()}: cost of verified recall, {what}", fontsize=10)
            fig.tight_layout()
            path = out / f"curves_{study}_{label}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def scatter(exact: pd.DataFrame, atp: dict, task: str, setting: str, group: str, out: Path) -> Path:
    """Estimate vs exact effect per node kind for AtP and AtP*; false negatives (true top-20 of the group,
    ranked below 100 among the group's nodes by the method) circled."""
    kinds = list(dict.fromkeys(exact["kind"]))
    fig, axes = plt.subplots(2, len(kinds), figsize=(max(3.0 * len(kinds), 6.5), 5.8), squeeze=False)
    exact = exact.assign(top=exact["score"].rank(ascending=False, method="first") <= FN_TOP)
    for row, method in enumerate(("AtP", "AtP*")):
        est = atp[method][0].merge(exact[KEY], on=KEY)  # the group's nodes only, in the method's order
        ranks = est.assign(rank=np.arange(1, len(est) + 1))
        merged = exact.merge(ranks[KEY + ["effect", "rank"]], on=KEY, suffixes=("", "_est"))
        for col, kind in enumerate(kinds):
            ax = axes[row][col]
            part = merged[merged["kind"] == kind]
            ax.scatter(part["effect"], part["effect_est"], s=4, alpha=0.4, color="tab:blue", lw=0)
            fn = part[part["top"] & (part["rank"] > FN_RANK)]
            ax.scatter(fn["effect"], fn["effect_est"], s=40, facecolors="none", edgecolors="red", lw=1.2,
                       label=f"false negatives ({len(fn)})")
            lim = float(np.nanmax(np.abs(part[["effect", "effect_est"]].to_numpy()))) * 1.05 or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="gray", lw=0.6)
            ax.set_title(f"{method}: {kind}", fontsize=9)
            ax.set_xlabel("exact effect", fontsize=8)
            ax.set_ylabel("estimate", fontsize=8)
            ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(f"{task.upper()} {setting}: estimate vs exact (circled: true top-{FN_TOP} ranked below {FN_RANK})",
                 fontsize=10)
    fig.tight_layout()
    path = out / f"scatter_{task}_{setting}_{group}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
