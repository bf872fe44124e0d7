"""The circuit figure: the verified (or top) edges of a run as a layered graph (SPEC.md §11).

Layers run bottom to top: the input (``embed``) at the bottom, each layer's attention row (one box
per head that the circuit touches) and its MLP above it, ``logits`` at the top. Only the rows and
boxes that the circuit touches are drawn, so a 30-layer model stays readable. An edge is drawn from
its writer's box to its reader's box, summed over positions; its width is |effect| and its colour
the sign (green: raising the metric when patched, red: lowering it, as in the report's tables).
A head box receives an edge at its query (solid line), key (dashed) or value (dotted) input. Under
grouped-query attention a key or value reader is the key-value head ``G{g}``, drawn as its own box.

Everything here reads the tidy edge table (the run folder's ``edges.parquet``): no model needed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .figures import to_data_uri

CIRCUIT_EDGES = 30
"""Edges drawn in the circuit figure (the largest |effect| among the verified ones, else the top)."""
POSITIVE, NEGATIVE = "#1a7f37", "#c0392b"
STYLE = {"q": "-", "k": "--", "v": ":", "mlp": "-", "logits": "-", "head": "-"}


def circuit_edges(edges: pd.DataFrame, limit: int = CIRCUIT_EDGES) -> tuple[pd.DataFrame, str]:
    """The edges to draw, summed over positions, and the column their values come from.

    Verified edges (a finite ``effect_exact``) with their exact effects when there are any, else the
    table's top edges (its first rows: the ranking's order) with their estimated ``effect``. At most
    ``limit`` (writer, reader) edges after summing over positions, the largest |value| first."""
    if edges is None or edges.empty:
        return pd.DataFrame(columns=["writer", "reader", "value"]), "effect"
    if "effect_exact" in edges.columns and edges["effect_exact"].notna().any():
        rows, column = edges[edges["effect_exact"].notna()], "effect_exact"
    else:
        rows, column = edges.head(max(limit * 4, limit)), "effect"
    keys = ["writer", "reader", "writer_layer", "writer_kind", "writer_unit", "reader_layer", "reader_kind",
            "reader_unit"]
    summed = (rows.assign(value=rows[column].fillna(0.0)).groupby(keys, sort=False, as_index=False)
              .agg(value=("value", "sum"), positions=("pos", "nunique")))
    order = np.argsort(-summed["value"].abs().to_numpy(), kind="stable")
    return summed.iloc[order[:limit]].reset_index(drop=True), column


def _writer_box(row) -> tuple:
    kind, layer, unit = row.writer_kind, int(row.writer_layer), int(row.writer_unit)
    if kind == "embed":
        return ("input", -1, 0)
    if kind == "mlp":
        return ("mlp", layer, 0)
    return ("attn", layer, unit if kind == "head" else -1)  # unit -1: the layer's whole attention


def _reader_box(row, grouped_kv: bool) -> tuple:
    kind, layer, unit = row.reader_kind, int(row.reader_layer), int(row.reader_unit)
    if kind == "logits":
        return ("logits", layer, 0)
    if kind == "mlp":
        return ("mlp", layer, 0)
    if kind in ("k", "v", "head") and grouped_kv:
        return ("kv", layer, unit)
    return ("attn", layer, unit)


def _row_of(box: tuple) -> float:
    """Vertical order: input, then per layer the attention row below the MLP row, logits last."""
    kind, layer, _ = box
    return {"input": -1.0, "attn": 2.0 * layer, "kv": 2.0 * layer, "mlp": 2.0 * layer + 1, "logits": 1e9}[kind]


def _label(box: tuple) -> str:
    kind, layer, unit = box
    return {"input": "input", "logits": "logits", "mlp": f"MLP {layer}",
            "attn": f"L{layer} H{unit}" if unit >= 0 else f"L{layer} attn", "kv": f"L{layer} kv G{unit}"}[kind]


def draw_circuit(edges: pd.DataFrame, limit: int = CIRCUIT_EDGES, gqa: bool = False, title: str | None = None) -> Figure:
    """The circuit as a matplotlib Figure (see the module's docstring); ``edges``: a tidy edge table;
    ``gqa``: the model shares key-value heads among query heads (then k/v readers get their own boxes)."""
    chosen, column = circuit_edges(edges, limit)
    grouped_kv = gqa
    boxes, links = {}, []
    for row in chosen.itertuples(index=False):
        a, b = _writer_box(row), _reader_box(row, grouped_kv)
        boxes.setdefault(a, _row_of(a))
        boxes.setdefault(b, _row_of(b))
        links.append((a, b, float(row.value), row.reader_kind))
    rows = sorted(set(boxes.values()))
    level = {r: i for i, r in enumerate(rows)}
    per_row: dict[float, list] = {}
    for box, r in boxes.items():
        per_row.setdefault(r, []).append(box)
    width = max([len(v) for v in per_row.values()] + [2])
    fig = Figure(figsize=(min(2.8 + 1.3 * width, 16), min(1.4 + 0.75 * max(len(rows), 2), 16)))
    ax = fig.add_subplot(1, 1, 1)
    where = {}
    for r, members in per_row.items():
        members.sort(key=lambda b: (b[0] == "kv", b[2]))
        xs = (width - 1) / 2 + np.arange(len(members)) - (len(members) - 1) / 2  # centred, one unit apart
        for box, x in zip(members, xs):
            where[box] = (float(x), float(level[r]))
    top = max([abs(v) for _, _, v, _ in links] + [1e-12])
    for a, b, value, kind in sorted(links, key=lambda l: abs(l[2])):
        (x0, y0), (x1, y1) = where[a], where[b]
        bend = 0.25 if abs(y1 - y0) > 1 else 0.0
        ax.add_patch(FancyArrowPatch((x0, y0 + 0.18), (x1, y1 - 0.18), arrowstyle="-|>", mutation_scale=8,
                                     connectionstyle=f"arc3,rad={bend * np.sign(x1 - x0 + 1e-9):.2f}",
                                     linewidth=0.6 + 5.4 * abs(value) / top, linestyle=STYLE.get(kind, "-"),
                                     color=POSITIVE if value > 0 else NEGATIVE, alpha=0.75, zorder=1))
    for box, (x, y) in where.items():
        fill = {"input": "#e8ecf3", "logits": "#e8ecf3", "mlp": "#f6e7cf", "attn": "#dbe8f7", "kv": "#e6dcf3"}[box[0]]
        ax.add_patch(FancyBboxPatch((x - 0.42, y - 0.17), 0.84, 0.34, boxstyle="round,pad=0.02", facecolor=fill,
                                    edgecolor="#44506a", linewidth=0.8, zorder=2))
        ax.text(x, y, _label(box), ha="center", va="center", fontsize=8, zorder=3)
    ax.set_xlim(-0.7, width - 0.3)
    ax.set_ylim(-0.6, max(len(rows) - 0.4, 1.4))
    ax.set_yticks(range(len(rows)), [_row_name(r, boxes) for r in rows], fontsize=8)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    what = "verified (exact) effect" if column == "effect_exact" else "estimated effect"
    ax.set_title(title or f"{len(links)} strongest edges, summed over positions: width = |{what}|", fontsize=10)
    if not links:
        ax.text(0.5, 0.5, "no edges", transform=ax.transAxes, ha="center", va="center", color="#889")
    legend = [Line2D([], [], color=POSITIVE, lw=2, label="effect > 0"), Line2D([], [], color=NEGATIVE, lw=2, label="effect < 0"),
              Line2D([], [], color="#444", lw=1, ls="-", label="into q / MLP / logits"),
              Line2D([], [], color="#444", lw=1, ls="--", label="into k"), Line2D([], [], color="#444", lw=1, ls=":", label="into v")]
    ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return fig


def _row_name(r: float, boxes: dict) -> str:
    kinds = {b[0] for b, row in boxes.items() if row == r}
    if r == -1.0:
        return "input"
    if r == 1e9:
        return "logits"
    layer = int(r // 2)
    return f"layer {layer} MLP" if "mlp" in kinds else f"layer {layer} attn"


def circuit_figure(edges: pd.DataFrame, limit: int = CIRCUIT_EDGES, gqa: bool = False) -> str:
    """:func:`draw_circuit` as a PNG ``data:`` URI for the report."""
    return to_data_uri(draw_circuit(edges, limit, gqa))


def save_circuit(edges: pd.DataFrame, path, limit: int = CIRCUIT_EDGES, gqa: bool = False, dpi: int = 110) -> None:
    """:func:`draw_circuit` written as a PNG file (e.g. for docs)."""
    draw_circuit(edges, limit, gqa).savefig(path, format="png", dpi=dpi, bbox_inches="tight")
