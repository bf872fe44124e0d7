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


def plot_circuit(top: pd.DataFrame, graph, path: Path, labels: dict, title: str) -> None:
    """The top verified edges as a layered graph: one column per position (x), layer (y); writers are
    circles (embed at -1, a head's write at ℓ+0.35 spread by head, an MLP's write at ℓ+0.7), readers squares."""
    columns = {p: i for i, p in enumerate(sorted(set(top.pos)))}

    def writer_xy(kind, layer, unit, pos):
        x = columns[pos] - 0.35 + (0.075 * unit if kind == "head" else 0.0)
        return x, (-1.0 if kind == "embed" else layer + (0.35 if kind in ("head", "attn") else 0.7))

    def reader_xy(kind, layer, unit, pos):
        x = columns[pos] + 0.4 + (0.0 if kind in ("logits", "mlp") else 0.05 * unit)
        return x, (graph.n_layers + 0.3 if kind == "logits" else float(layer))

    fig, ax = pyplot().subplots(figsize=(2.5 + 1.9 * len(columns), 7.5))
    nodes = {}
    span = max(abs(top.exact).max(), 1e-9)
    for row in top.itertuples():
        w = writer_xy(row.writer_kind, row.writer_layer, row.writer_unit, row.pos)
        r = reader_xy(row.reader_kind, row.reader_layer, row.reader_unit, row.pos)
        nodes[(row.writer, row.pos)] = (*w, "writer")
        nodes[(row.reader, row.pos)] = (*r, "reader")
        ax.annotate("", xy=r, xytext=w,
                    arrowprops=dict(arrowstyle="-|>", color="tab:red" if row.exact > 0 else "tab:blue",
                                    lw=0.6 + 3.5 * abs(row.exact) / span, alpha=0.7, shrinkA=3, shrinkB=3,
                                    connectionstyle="arc3,rad=-0.12"))
    for (name, pos), (x, y, role) in nodes.items():
        label_node(ax, name, x, y, role)
    ax.set_xticks(list(columns.values()))
    ax.set_xticklabels([f"pos {p}\n{labels.get(p, '')}" for p in columns], fontsize=7)
    ax.set_xlim(-0.9, len(columns) - 0.1)
    ax.set_ylim(-1.8, graph.n_layers + 1.2)
    ax.set_ylabel("layer (writers: circles, readers: squares; logits at the top)")
    ax.set_title(title + "\n(red: exact effect > 0, blue: < 0; width ∝ |exact effect|)", fontsize=9)
    ax.grid(alpha=0.2, axis="y")
    save(fig, path)


def label_node(ax, name: str, x: float, y: float, role: str) -> None:
    """A writer (circle) or reader (square) of the circuit figure and its name."""
    color = "black" if role == "writer" else "tab:purple"
    ax.plot(x, y, "o" if role == "writer" else "s", ms=5, color=color)
    label = name.replace(".head.", ".")
    if ".H" in label and role == "writer":  # heads of one layer side by side: labels above/below, alternating
        up = int(label.rsplit("H", 1)[1]) % 2
        ax.annotate(label, (x, y), xytext=(0, 5 if up else -6), textcoords="offset points", ha="center",
                    va="bottom" if up else "top", fontsize=5.5, color=color, rotation=30 if up else -30)
    else:
        ax.annotate(label, (x, y), xytext=(-4 if role == "writer" else 4, 0), textcoords="offset points",
                    ha="right" if role == "writer" else "left", va="center", fontsize=6.5, color=color)
