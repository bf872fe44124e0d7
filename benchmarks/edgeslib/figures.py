"""The edge evidence's figures: recall-cost curves (log scale, against the cost of patching every edge)
and the circuit of the largest verified edges."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmarks.plotting import pyplot, save

from .setting import VARIANTS

COLORS = {"AtP": "tab:blue", "AtP+QKfix": "tab:orange", "AtP+GradDrop": "tab:green", "AtP*": "tab:red",
          "random": "tab:gray", "oracle": "black"}


def recall_axis(ax, frame: pd.DataFrame, n_edges: int) -> None:
    """Log scale, axis labels, and a line at the cost of patching every edge, for recall-cost curves."""
    ax.set_yscale("log")
    ax.set_xlabel("k (true top-k edges, by |mean exact effect|)")
    ax.set_ylabel("forward-pass equivalents per pair")
    ax.axhline(n_edges, color="lightgray", lw=0.8)
    ax.text(frame.k.iloc[-1], n_edges, f"all {n_edges} edges", fontsize=7, ha="right", va="bottom", color="gray")
    ax.grid(alpha=0.3, which="both")


def plot_curves(frame: pd.DataFrame, path: Path, n_edges: int, title: str) -> None:
    """The AtP variants', random orders' and the oracle's curves; estimation counted by passes (left) and
    by wall-clock time (right)."""
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for ax, time_based in zip(axes, (False, True)):
        for method in ["oracle", *VARIANTS, "random"]:
            column = method + " (time)" if time_based and method in VARIANTS else method
            ax.plot(frame.k, frame[column], label=method, color=COLORS[method], lw=1.6 if method != "oracle" else 1,
                    ls="--" if method in ("oracle", "random") else "-")
        recall_axis(ax, frame, n_edges)
        ax.set_title("estimation cost: " + ("wall-clock time, calibrated on AtP" if time_based else
                                             "the engine's pass accounting"), fontsize=9)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    save(fig, path)


def plot_circuit(top: pd.DataFrame, group_size: int, path: Path, labels: dict, title: str) -> None:
    """The top verified edges as the report draws a circuit (``atpstar.run.report.circuit``): one column
    per position with the pairs' tokens there, layers bottom to top, one box per component, its colour key
    in the legend; drawn from the mean exact effects."""
    from atpstar.run.report.circuit import save_circuit

    frame = top.assign(effect=top.exact, effect_exact=top.exact, token=[labels.get(p, "") for p in top.pos])
    save_circuit(frame, path, limit=len(frame), group_size=group_size, dpi=130, title=title)
