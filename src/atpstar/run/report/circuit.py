"""The circuit figure: a run's verified (or top) edges, position by position, as a layered graph.

Columns are prompt positions (with the token there), rows run bottom to top: the input, then per
layer the attention row and the MLP row, ``logits`` on top. A box is one component at one position:
a head (``L14 H3``: its query input and its output there), a key-value head under grouped-query
attention (``L14 kv G2``: the key and value input the query heads of its group share), a layer's
whole attention write where heads do not add up (``L14 attn``, Gemma 3), an MLP, the input or the
logits. Only the boxes the drawn edges touch appear, so a 30-layer model stays readable.

An edge is an arrow from its writer's box to its reader's box at the same position: width |effect|,
colour its sign (:data:`KEY`: green, patching it raises the metric; red, patching it lowers the metric,
i.e. the edge carries the behaviour), line style the reader's input (solid: query, MLP or logits;
dashed: key; dotted: value). Attention moves information between positions inside a head, so a grey
arrow links a head's key/value input at one position to the same head's output there or later
(and, for a whole-layer attention writer, a head's inputs to the layer's write): the route "key at the
name, query and output at the last token" reads as one path. Every label is laid out on its own slot,
so no two labels overlap.

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
POSITIVE, NEGATIVE, INSIDE = "#1a7f37", "#c0392b", "#7d8799"
KEY = ("effect > 0: patching the edge raises the metric",
       "effect < 0: patching it lowers the metric (the edge carries the behaviour)")
"""The colour key (green, red), stated once: in the figure's legend (and in docs/edges.md)."""
INSIDE_KEY = "grey: inside one head, from its key/value input to its output at the same or a later position"
STYLE = {"q": "-", "k": "--", "v": ":", "mlp": "-", "logits": "-", "head": "-"}
BEND = {"q": 0.12, "k": 0.22, "v": -0.22, "head": 0.12, "mlp": 0.1, "logits": 0.1}
FILL = {"input": "#e8ecf3", "logits": "#e8ecf3", "mlp": "#f6e7cf", "head": "#dbe8f7", "kv": "#e6dcf3",
        "attn": "#dbe8f7"}
_KEYS = ["writer", "reader", "pos", "writer_layer", "writer_kind", "writer_unit", "reader_layer", "reader_kind",
         "reader_unit"]


def circuit_edges(edges: pd.DataFrame, limit: int = CIRCUIT_EDGES) -> tuple[pd.DataFrame, str]:
    """The edges to draw, one row per edge at its position, and the column their values come from.

    Verified edges (a finite ``effect_exact``) with their exact effects when there are any, else the
    table's top edges (its first rows: the ranking's order) with their estimated ``effect``; at most
    ``limit`` of them, the largest |value| first. Columns: the edge's keys, ``token`` and ``value``."""
    if edges is None or edges.empty:
        return pd.DataFrame(columns=[*_KEYS, "token", "value"]), "effect"
    if "effect_exact" in edges.columns and edges["effect_exact"].notna().any():
        rows, column = edges[edges["effect_exact"].notna()], "effect_exact"
    else:
        rows, column = edges.head(max(limit * 4, limit)), "effect"
    out = rows[_KEYS].assign(token=rows["token"] if "token" in rows.columns else "",
                             value=rows[column].astype(float).fillna(0.0))
    order = np.argsort(-out["value"].abs().to_numpy(), kind="stable")
    return out.iloc[order[:limit]].reset_index(drop=True), column


def _writer_box(row) -> tuple:
    kind, layer, unit, pos = row.writer_kind, int(row.writer_layer), int(row.writer_unit), int(row.pos)
    if kind == "embed":
        return ("input", -1, 0, pos)
    if kind == "mlp":
        return ("mlp", layer, 0, pos)
    return ("head", layer, unit, pos) if kind == "head" else ("attn", layer, -1, pos)


def _reader_box(row, group_size: int) -> tuple:
    kind, layer, unit, pos = row.reader_kind, int(row.reader_layer), int(row.reader_unit), int(row.pos)
    if kind == "logits":
        return ("logits", layer, 0, pos)
    if kind == "mlp":
        return ("mlp", layer, 0, pos)
    if kind in ("k", "v", "head") and group_size > 1:
        return ("kv", layer, unit, pos)
    return ("head", layer, unit, pos)


def _row_of(box: tuple) -> float:
    """Vertical order: input, then per layer the attention row below the MLP row, logits last."""
    return {"input": -1.0, "head": 2.0 * box[1], "kv": 2.0 * box[1], "attn": 2.0 * box[1], "mlp": 2.0 * box[1] + 1,
            "logits": 1e9}[box[0]]


def _label(box: tuple) -> str:
    kind, layer, unit, _ = box
    return {"input": "input", "logits": "logits", "mlp": f"MLP {layer}", "head": f"L{layer} H{unit}",
            "attn": f"L{layer} attn", "kv": f"L{layer} kv G{unit}"}[kind]


def _inside_links(inputs: dict, outputs: set, group_size: int) -> list[tuple]:
    """(input box, output box) pairs of one head: its key/value input at s to its output at t ≥ s (t > s on
    the same box), and for a whole-layer attention write any head input of the layer at s to the write at
    t ≥ s (t = s for a query)."""
    links = []
    for box, kinds in inputs.items():
        kind, layer, unit, s = box
        heads = range(unit * group_size, (unit + 1) * group_size) if kind == "kv" else [unit]
        reads_kv = kind == "kv" or bool(kinds & {"k", "v", "head"})
        for out in outputs:
            okind, olayer, ounit, t = out
            if olayer != layer or out == box:
                continue
            if okind == "head" and ounit in heads and reads_kv and (t > s or (t == s and kind == "kv")):
                links.append((box, out))
            elif okind == "attn" and (t == s or (t > s and reads_kv)):
                links.append((box, out))
    return links


def _layout(boxes: set, group_size: int = 1) -> tuple[dict, list, list, float]:
    """Box centres (x, y), the rows (bottom to top), the columns (position, x centre) and the width in slots.
    Each position's column is as wide as its most crowded row; boxes sit one slot apart, so labels never
    overlap. In a row a key-value head comes just before the query heads of its group."""
    rows = sorted({_row_of(b) for b in boxes})
    level = {r: i for i, r in enumerate(rows)}
    cells: dict = {}
    for box in boxes:
        cells.setdefault((_row_of(box), box[3]), []).append(box)
    positions = sorted({b[3] for b in boxes})
    where, columns, x = {}, [], 0.0
    for pos in positions:
        width = max(len(v) for (r, p), v in cells.items() if p == pos)
        for (r, p), members in cells.items():
            if p != pos:
                continue
            members.sort(key=lambda b: (b[0] == "attn", b[2] if b[0] == "kv" else b[2] // group_size, b[0] != "kv", b[2]))
            start = x + (width - len(members)) / 2
            for i, box in enumerate(members):
                where[box] = (start + i + 0.5, float(level[r]))
        columns.append((pos, x + width / 2))
        x += width + 0.35
    return where, rows, columns, max(x - 0.35, 1.0)


def _collect(chosen: pd.DataFrame, group_size: int) -> tuple[list, dict, set]:
    """The edges as (writer box, reader box, value, reader kind), every head input box with the kinds of
    input it receives, and every box that writes."""
    links, inputs, outputs = [], {}, set()
    for row in chosen.itertuples(index=False):
        a, b = _writer_box(row), _reader_box(row, group_size)
        links.append((a, b, float(row.value), row.reader_kind))
        outputs.add(a)
        if b[0] in ("head", "kv"):
            inputs.setdefault(b, set()).add(row.reader_kind)
    return links, inputs, outputs


def draw_circuit(edges: pd.DataFrame, limit: int = CIRCUIT_EDGES, group_size: int = 1, title: str | None = None) -> Figure:
    """The circuit as a matplotlib Figure (see the module's docstring). ``edges``: a tidy edge table;
    ``group_size``: query heads per key-value head (> 1 under grouped-query attention: key and value
    inputs then get their own ``kv`` boxes, linked to the heads of their group)."""
    chosen, column = circuit_edges(edges, limit)
    links, inputs, outputs = _collect(chosen, group_size)
    inside = _inside_links(inputs, outputs, group_size)
    boxes = {b for a, b, _, _ in links} | {a for a, _, _, _ in links}
    where, rows, columns, width = _layout(boxes, group_size) if boxes else ({}, [0.0], [], 2.0)
    left, right, bottom, top_margin = 1.0, 0.3, 1.3, 0.45
    fig_w = max(left + right + 1.0 * width, 7.5)
    fig_h = bottom + top_margin + 0.62 * max(len(rows), 2)
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes([left / fig_w, bottom / fig_h, (fig_w - left - right) / fig_w, 1 - (bottom + top_margin) / fig_h])
    top = max([abs(v) for _, _, v, _ in links] + [1e-12])
    for a, b in inside:
        span = abs(where[b][0] - where[a][0]) + 1e-9  # in inches (one slot is one inch): a bow ~0.45 inch high
        ax.add_patch(_arrow(where[a], where[b], INSIDE, 1.1, "-", -min(0.45, 0.9 / span), z=1))
    for a, b, value, kind in sorted(links, key=lambda l: abs(l[2])):
        ax.add_patch(_arrow(where[a], where[b], POSITIVE if value > 0 else NEGATIVE, 0.6 + 5.4 * abs(value) / top,
                            STYLE.get(kind, "-"), BEND.get(kind, 0.1), z=2))
    for box, (x, y) in where.items():
        ax.add_patch(FancyBboxPatch((x - 0.43, y - 0.16), 0.86, 0.32, boxstyle="round,pad=0.02", facecolor=FILL[box[0]],
                                    edgecolor="#44506a", linewidth=0.8, zorder=3))
        ax.text(x, y, _label(box), ha="center", va="center", fontsize=7.5, zorder=4)
    ax.set_xlim(-0.1, width + 0.1)
    ax.set_ylim(-0.55, max(len(rows) - 0.45, 1.45))
    ax.set_yticks(range(len(rows)), [_row_name(r) for r in rows], fontsize=8)
    tokens = dict(zip(chosen["pos"].astype(int), chosen["token"].astype(str)))
    ax.set_xticks([x for _, x in columns], [_column_name(p, tokens.get(p, "")) for p, _ in columns], fontsize=7.5)
    ax.tick_params(length=0)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    what = "verified (exact) effect" if column == "effect_exact" else "estimated effect"
    ax.set_title(title or f"the {len(links)} strongest edges, by position (width = |{what}|)", fontsize=10, loc="left")
    if not links:
        ax.text(0.5, 0.5, "no edges", transform=ax.transAxes, ha="center", va="center", color="#889")
    fig.legend(handles=_legend(), loc="lower left", bbox_to_anchor=(left / fig_w, 0.02), ncol=2, fontsize=7.5,
               frameon=False)
    return fig


def _arrow(start, end, color, width, style, bend, z):
    (x0, y0), (x1, y1) = start, end
    same_row = abs(y1 - y0) < 1e-9
    a, b = ((x0 + 0.43, y0), (x1 - 0.43, y1)) if same_row and x1 > x0 else ((x0, y0 + 0.16), (x1, y1 - 0.16))
    rad = bend if abs(x1 - x0) > 1e-9 or not same_row else 0.0
    return FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=9, connectionstyle=f"arc3,rad={rad:.2f}",
                           linewidth=width, linestyle=style, color=color, alpha=0.8, zorder=z)


def _legend() -> list:
    return [Line2D([], [], color=POSITIVE, lw=2.5, label="green: " + KEY[0]),
            Line2D([], [], color=NEGATIVE, lw=2.5, label="red: " + KEY[1]),
            Line2D([], [], color="#444", lw=1, ls="-", label="solid: into a query, an MLP or the logits"),
            Line2D([], [], color="#444", lw=1, ls="--", label="dashed: into a key"),
            Line2D([], [], color="#444", lw=1, ls=":", label="dotted: into a value"),
            Line2D([], [], color=INSIDE, lw=1.4, label=INSIDE_KEY)]


def _row_name(r: float) -> str:
    if r == -1.0:
        return "input"
    if r == 1e9:
        return "logits"
    return f"layer {int(r // 2)} MLP" if r % 2 else f"layer {int(r // 2)} attn"


def _column_name(pos: int, token: str) -> str:
    token = token if len(token) <= 10 else token[:9] + "…"
    return "all positions" if pos < 0 else f"pos {pos}\n{token!r}" if token else f"pos {pos}"


def circuit_figure(edges: pd.DataFrame, limit: int = CIRCUIT_EDGES, group_size: int = 1) -> str:
    """:func:`draw_circuit` as a PNG ``data:`` URI for the report."""
    return to_data_uri(draw_circuit(edges, limit, group_size))


def save_circuit(edges: pd.DataFrame, path, limit: int = CIRCUIT_EDGES, group_size: int = 1, dpi: int = 110,
                 title: str | None = None) -> None:
    """:func:`draw_circuit` written as a PNG file (e.g. for docs)."""
    draw_circuit(edges, limit, group_size, title).savefig(path, format="png", dpi=dpi, bbox_inches="tight")
