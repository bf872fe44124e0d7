"""The report's figures, drawn with matplotlib (no display needed) and inlined as base64 PNG."""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

KIND_COLORS = {"q": "#1f77b4", "k": "#ff7f0e", "v": "#2ca02c", "head": "#d62728", "neuron": "#9467bd"}
KIND_TITLES = {"q": "queries (layer × query head)", "k": "keys (layer × key-value head)",
               "v": "values (layer × key-value head)", "head": "head outputs (layer × head)",
               "neuron": "MLP neurons (layer × position)"}
DPI = 96


def to_data_uri(fig: Figure) -> str:
    """PNG of the figure as a ``data:`` URI (the page needs no other file)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmaps(maps: dict, label: str, tokens: list[str]) -> str:
    """One panel per node kind: ``maps[kind]`` is (layers, units) or, for neurons, (layers, positions)."""
    kinds = list(maps)
    cols = 2 if len(kinds) == 4 else min(len(kinds), 3)
    rows = -(-len(kinds) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows))
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(rows, cols, i + 1)
        data = maps[kind]
        image = ax.imshow(np.nan_to_num(data, nan=0.0), aspect="auto", origin="lower", cmap="viridis",
                          interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.85)
        ax.set_title(KIND_TITLES.get(kind, kind), fontsize=10)
        ax.set_ylabel("layer")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if kind == "neuron":
            _token_axis(ax, tokens, data.shape[1])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("head")
    fig.suptitle(label, fontsize=11)
    fig.tight_layout()
    return to_data_uri(fig)


def positions(table, tokens: list[str], label: str) -> str:
    """Node kind × position heatmap, the prompt's tokens on the x axis."""
    data = table.to_numpy(dtype=float)
    fig = Figure(figsize=(max(6.0, 0.42 * data.shape[1] + 2), 0.5 * data.shape[0] + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(np.nan_to_num(data, nan=0.0), aspect="auto", cmap="magma_r", interpolation="nearest")
    fig.colorbar(image, ax=ax, pad=0.01)
    ax.set_yticks(range(len(table.index)), list(table.index))
    _token_axis(ax, tokens, data.shape[1])
    ax.set_title(label, fontsize=10)
    fig.tight_layout()
    return to_data_uri(fig)


def _token_axis(ax, tokens: list[str], width: int) -> None:
    labels = [f"{i} {tokens[i]!r}"[:18] if i < len(tokens) else str(i) for i in range(width)]
    step = max(1, width // 40)
    ax.set_xticks(range(0, width, step), labels[::step], rotation=90, fontsize=7)
    ax.set_xlabel("position (token)")


def scatter(points, estimate_col: str, method: str) -> str:
    """Estimated against verified exact effect, one colour per node kind, with the diagonal."""
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    x, y = points[estimate_col].to_numpy(dtype=float), points["effect_exact"].to_numpy(dtype=float)
    for kind, color in KIND_COLORS.items():
        sel = (points["kind"] == kind).to_numpy()
        if sel.any():
            ax.scatter(x[sel], y[sel], s=14, alpha=0.75, color=color, label=kind, edgecolors="none")
    finite = np.concatenate([x[np.isfinite(x)], y[np.isfinite(y)]])
    lim = float(np.abs(finite).max()) * 1.05 if len(finite) else 1.0
    ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--", label="estimate = exact")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.axhline(0, color="#ccc", lw=0.5)
    ax.axvline(0, color="#ccc", lw=0.5)
    ax.set_xlabel(f"{method} estimate of the mean effect")
    ax.set_ylabel("verified exact mean effect")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return to_data_uri(fig)


def recall(curves: dict, k: int) -> str:
    """Verified recall against cost: the true top-j nodes are all verified (y) once this much is spent
    (x: forward-pass equivalents per pair, log scale), j = 1..k."""
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for method, (cost, rec) in curves.items():
        style = {"color": "black", "ls": ":"} if method == "oracle" else {}
        ax.step(np.maximum(cost, 0.1), rec, where="post", label=method, **style)
    ax.set_xscale("log")
    ax.set_xlabel("cost: forward-pass equivalents per pair (estimate + 1 per verified node)")
    ax.set_ylabel("j: the true top-j nodes all verified")
    ax.set_ylim(0, k * 1.03)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)
