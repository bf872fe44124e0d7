"""The report as one self-contained HTML page: styles, script and figures inline, no network requests."""

from __future__ import annotations

import html
import math
from importlib import resources

import numpy as np
import pandas as pd

from ..folder import method_slug
from . import circuit, data, faithfulness, figures

SECTIONS = ("summary", "diagnostic", "theta-curve", "top-nodes", "circuit", "faithfulness", "heatmaps", "positions",
            "scatter", "recall")
NODE_SECTIONS = {"top-nodes": "Top nodes", "heatmaps": "Where the effects are", "positions": "Per position",
                 "scatter": "Estimate against verified effect", "recall": "Recall against cost"}


def asset(name: str) -> str:
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def facts(items) -> str:
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="facts">{rows}</dl>'


def html_table(frame: pd.DataFrame, ident: str, sortable: bool = True, text_cols=("name", "kind", "token")) -> str:
    """A table with one ``<th data-col=...>`` per column; numeric cells carry their raw value for sorting."""
    head = "".join(f'<th data-col="{esc(c)}" class="{"t" if c in text_cols else ""}">{esc(c)}</th>' for c in frame.columns)
    body = []
    for row in frame.itertuples(index=False):
        cells = []
        for col, value in zip(frame.columns, row):
            if col in text_cols:
                cells.append(f'<td class="t">{esc(repr(value) if col == "token" else value)}</td>')
                continue
            sign = ""
            if col.startswith("effect") and isinstance(value, (float, np.floating)) and math.isfinite(value):
                sign = ' class="pos"' if value > 0 else ' class="neg"' if value < 0 else ""
            raw = "" if isinstance(value, (float, np.floating)) and not math.isfinite(value) else value
            cells.append(f'<td data-v="{esc(raw)}"{sign}>{esc(fmt(value))}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = "sortable" if sortable else ""
    return (f'<div class="scroll"><table id="{ident}" class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>\n' + "\n".join(body) + "\n</tbody></table></div>")


def token_chips(tokens: list[str], strength: np.ndarray) -> str:
    """The display prompt's tokens, shaded by the largest score at their position."""
    top = float(np.nanmax(strength)) if np.isfinite(strength).any() else 0.0
    chips = []
    for i, tok in enumerate(tokens):
        level = float(strength[i]) / top if top > 0 and i < len(strength) and np.isfinite(strength[i]) else 0.0
        chips.append(f'<span class="tok" style="background: rgba(230, 85, 13, {0.85 * level:.2f})" '
                     f'title="position {i}: max score {fmt(float(strength[i]) if i < len(strength) else None)}">'
                     f'{esc(tok)}<small>{i}</small></span>')
    return '<div class="tokens">' + "".join(chips) + "</div>"


def first_token(pairs: dict) -> str:
    """What is at position 0: the BOS token, or a warning when clean and noise differ there (attention sink)."""
    differ, tokens = pairs.get("first_token_differs"), pairs.get("tokens") or ["?"]
    if differ is None:  # a run made before this was recorded
        return "—"
    if differ:
        return (f"{differ} of {pairs.get('n', '?')} pairs differ in their first token ({tokens[0]!r} in the example): "
                "AtP's estimates at the first positions are unreliable (attention sink): put the beginning-of-sequence "
                "token in front (leave out --no-bos) or start clean and noise with the same token")
    what = "the beginning-of-sequence token" if pairs.get("bos") else "no beginning-of-sequence token; clean and noise agree"
    return f"{tokens[0]!r} at position 0 ({what})"


def summary(meta: dict, nodes: pd.DataFrame) -> str:
    cfg, model, st = meta["config"], meta.get("model", {}), meta["stages"]
    pairs = st.get("pairs", {})
    example = pairs.get("texts", [[]])[0] if pairs.get("texts") else []
    verify = st.get("verify")
    items = [
        ("model", esc(model.get("description", cfg["model"]))),
        ("weights sha256", f'<code>{esc(model.get("weights_sha256", "?")[:16])}…</code>'),
        ("task", esc(cfg["task"])),
        ("prompt pairs", esc(f'{pairs.get("n", "?")} (token lengths {pairs.get("lengths")}), metric {pairs.get("metric")}')),
        ("example pair", esc(" / ".join(repr(t) for t in example)) if example else "—"),
        ("first token", esc(first_token(pairs))),
        ("methods", esc(", ".join(cfg["methods"]) + " (the first one's ranking is verified)")),
        ("node kinds", esc(cfg["kinds"])),
        ("level", esc(cfg.get("level", "nodes"))),
        ("nodes ranked", f"{len(nodes):,}" if nodes is not None else "—"),
        ("verified", esc(f'{verify["nodes"]:,} nodes; stopped: {verify["stopped"]}') if verify else "not run"),
        *((("edges ranked", esc(f'{st["edges"].get("edges", 0):,} ({st["edges"].get("method")})')),
           ("edges verified", esc(f'{st["edges"].get("verified", 0):,}; stopped: {st["edges"].get("stopped", "not run")}')))
          if "edges" in st else ()),
        ("seed", esc(cfg["seed"])),
        ("status", esc(meta.get("status"))),
    ]
    costs = meta.get("costs", {})
    rows = "".join(f"<tr><td class='t'>{esc(name)}</td><td>{fmt(c.get('per_pair'))}</td><td>{fmt(c.get('seconds'))}</td></tr>"
                   for name, c in costs.items())
    cost_table = ("<h3>Cost</h3><table><thead><tr><th class='t'>stage</th><th>forward-pass equivalents per pair</th>"
                  f"<th>seconds</th></tr></thead><tbody>{rows}</tbody></table>") if rows else ""
    return facts(items) + cost_table


def diagnostic(diagnosis: dict | None, suspects: pd.DataFrame | None, unit: str = "node") -> str:
    if diagnosis is None:
        return f'<p class="note">The {unit} diagnostic was not run (add <code>--diagnose</code>).</p>'
    theta = diagnosis.get("theta")
    ident = "suspects" if unit == "node" else f"{unit}-suspects"
    body = (f'<p>θ = <span class="theta">{esc(fmt(theta) or "∞")}</span> at δ = {esc(fmt(diagnosis.get("delta")))}: '
            f"no unverified {unit}'s |effect| should exceed θ, except with probability δ.</p>"
            f'<p class="statement">{esc(diagnosis.get("statement", ""))}</p>')
    if diagnosis.get("warning"):
        body += f'<p class="warning">Warning: {esc(diagnosis["warning"])}</p>'
    design = diagnosis.get("design") or {}
    if design.get("explanation"):
        body += (f'<p class="note">Design: {esc(design.get("why", ""))}. {esc(design["explanation"])}</p>')
    if suspects is not None and len(suspects):
        columns = [c for c in suspects.columns if c not in EDGE_SUSPECT_HIDDEN]
        body += (f"<details><summary>The unverified {unit}s most likely to be large (verify these next)</summary>"
                 + html_table(suspects.head(20)[columns], ident) + "</details>")
    return body


EDGE_SUSPECT_HIDDEN = ("writer", "reader", "writer_layer", "writer_kind", "writer_unit", "reader_layer", "reader_kind", "reader_unit",
                       "score")
"""Edge suspect columns left out of the report's table (the name says them)."""


def build(meta: dict, nodes: pd.DataFrame | None, diagnosis: dict | None = None, suspects: pd.DataFrame | None = None,
          edges: pd.DataFrame | None = None, edge_diagnosis: dict | None = None,
          edge_suspects: pd.DataFrame | None = None, faith: dict | None = None) -> str:
    """The whole page. ``nodes`` is None in an edge-level run (``--level edges``), ``edges`` None in a
    node-level one: their sections then say how to get them. The edge diagnostic's statement is shown in
    the circuit section; ``faith`` (``stages/faithfulness.json``, with ``--faithfulness``) gets its own."""
    methods = meta["config"]["methods"]
    tokens = meta["stages"].get("pairs", {}).get("tokens", [])
    node_parts = ([top_nodes(nodes, methods), heatmap_section(nodes, methods[0], tokens),
                   position_section(nodes, methods[0], tokens), scatter_section(nodes, methods[0]),
                   recall_section(nodes, methods, meta)] if nodes is not None else
                  [section(ident, title, '<p class="note">This run is at the edge level (<code>--level edges</code>): '
                           "no node table. <code>--level both</code> ranks nodes and edges.</p>")
                   for ident, title in NODE_SECTIONS.items()])
    parts = [section("summary", "Run", summary(meta, nodes)),
             section("diagnostic", "Diagnostic: how large can a missed effect be?", diagnostic(diagnosis, suspects)),
             theta_curve_section(diagnosis, meta),
             node_parts[0], circuit_section(edges, meta, edge_diagnosis, edge_suspects),
             section("faithfulness", "Faithfulness of the edge ranking's circuits (MIB's curves)",
                     faithfulness.body(faith, meta["stages"].get("pairs", {}).get("metric", "the metric"))),
             *node_parts[1:]]
    title = f'atpstar: {meta["config"]["task"]} on {meta.get("model", {}).get("name", meta["config"]["model"])}'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{esc(title)}</title><style>{asset("style.css")}</style></head>\n'
            f'<body><h1>{esc(title)}</h1><p class="sub">AtP* run report — which components cause the behaviour, '
            "checked by exact patching</p>\n" + "\n".join(parts)
            + f'\n<script>{asset("sort.js")}</script>\n</body></html>\n')


def image(alt: str, uri: str) -> str:
    return f'<img alt="{esc(alt)}" src="{uri}">'


def top_nodes(nodes: pd.DataFrame, methods: list[str]) -> str:
    top = data.top_table(nodes, methods)
    return section("top-nodes", f"Top {len(top)} nodes of the {methods[0]} ranking",
                   '<p class="note">Click a column to sort. effect_exact: verified by exact activation patching '
                   "(empty: not verified). rank 1 = top of the ranking.</p>" + html_table(top, "top-nodes-table"))


def heatmap_section(nodes: pd.DataFrame, primary: str, tokens: list[str]) -> str:
    score = f"score_{method_slug(primary)}"
    maps = {k: data.heatmap(nodes, k, score, by="pos" if k == "neuron" else "unit") for k in data.kinds_in(nodes)}
    return section("heatmaps", "Where the effects are (layer × head, per node kind)",
                   image("heatmaps", figures.heatmaps(maps, f"max {primary} score over positions", tokens)))


def position_section(nodes: pd.DataFrame, primary: str, tokens: list[str]) -> str:
    n_pos = max(len(tokens), int(nodes["pos"].max()) + 1 if len(nodes) else 0)
    per_pos = data.by_position(nodes, f"score_{method_slug(primary)}", n_pos)
    strength = per_pos.max(axis=0).to_numpy(dtype=float)
    return section("positions", "Per position (the display prompt's tokens)", token_chips(tokens, strength)
                   + image("positions", figures.positions(per_pos, tokens, f"max {primary} score per kind and position")))


def scatter_section(nodes: pd.DataFrame, primary: str) -> str:
    points = data.scatter(nodes, primary)
    body = (image("scatter", figures.scatter(points, f"effect_{method_slug(primary)}", primary)) if len(points)
            else '<p class="note">No verified nodes (give <code>--verify-budget</code>).</p>')
    return section("scatter", "Estimate against verified effect", body)


def recall_section(nodes: pd.DataFrame, methods: list[str], meta: dict) -> str:
    est_cost = {m: meta["stages"].get(f"estimate:{m}", {}).get("per_pair", 0.0) for m in methods}
    curves = data.recall_curves(nodes, methods, est_cost)
    if not curves:
        body = ('<p class="note">No ground truth in this run: add <code>acp</code> to <code>--method</code> (exact '
                "patching of every node) to draw each method's recall-vs-cost curve.</p>")
    else:
        body = ('<p class="note">The exact effects of every node (acp) give the true ranking; each curve is the cost '
                "of following a method's ranking (its estimation cost + one forward pass per verified node) until "
                "the true top-j nodes are all verified. The oracle verifies exactly the top j.</p>"
                + image("recall", figures.recall(curves, max(int(c[1][-1]) for c in curves.values()))))
    return section("recall", "Recall against cost", body)


def theta_curve_section(diagnosis: dict | None, meta: dict) -> str:
    """θ against the number of verified nodes (``--stop theta``: one set of random subsets, re-bounded as
    nodes are verified), with the cost axis."""
    history = (diagnosis or {}).get("theta_history")
    if not history:
        body = ('<p class="note">Verify with <code>--stop theta</code> (e.g. <code>theta:relative=0.1</code>) to see '
                "the bound θ fall as nodes are verified: the random subsets are patched once and re-bounded after "
                "every chunk at no further cost, until nothing large can be left.</p>")
    else:
        primary = meta["config"]["methods"][0]
        base = (meta["stages"].get(f"estimate:{primary}", {}).get("per_pair", 0.0)
                + float(history[0].get("cost_per_pair", 0.0)))
        body = ('<p class="note">θ at each check from the same random subsets, re-bounded as nodes were verified '
                "in ranked order. Check i spends δ/(2i(i+1)) on its union bound over the units; one variance bound, "
                "made at the first check at δ/4 and refreshed at checks 2, 4, 8, ... from the other δ/4, serves "
                "them all; so every check holds at once with probability at least 1 − δ, and the statement holds "
                "wherever verification stopped. "
                f"Top axis: total cost ({primary} + the diagnostic's subsets + one forward pass per verified "
                "node, per pair).</p>" + image("theta-curve", figures.theta_curve(history, base)))
    return section("theta-curve", "θ against verified nodes", body)


CIRCUIT_TABLE_COLUMNS = ("rank", "name", "token", "score", "effect", "effect_exact")


def circuit_section(edges: pd.DataFrame | None, meta: dict, edge_diagnosis: dict | None = None,
                    edge_suspects: pd.DataFrame | None = None) -> str:
    """The circuit figure (verified edges, else the top ones) beside the table of the top edges, then the
    edge diagnostic (θ for the unverified edges) when the run made one."""
    title = "Circuit: the strongest edges (writer → reader)"
    if edges is None:
        return section("circuit", title, '<p class="note">This run ranked nodes only: add <code>--level edges</code> '
                       "(or <code>both</code>) to rank the edges between them (writer → reader) and draw "
                       "the circuit.</p>")
    facts_ = meta["stages"].get("edges", {})
    heads, kv_heads = facts_.get("n_heads"), facts_.get("n_kv_heads")
    group_size = heads // kv_heads if heads and kv_heads else 1
    chosen, column = circuit.circuit_edges(edges)
    source = ("the verified edges with their exact effects" if column == "effect_exact"
              else "the top of the ranking with its estimated effects (no edge was verified)")
    note = (f'<p class="note">The figure draws {esc(source)}, position by position (columns), layers bottom '
            "to top, width = |effect|; its key names the colours and line styles. "
            f"The table lists the top {min(len(edges), data.TOP_ROWS)} of {facts_.get('edges', len(edges)):,} edges "
            "ranked; click a column to sort.</p>")
    table = edges.head(data.TOP_ROWS)[[c for c in CIRCUIT_TABLE_COLUMNS if c in edges.columns]]
    body = (note + '<div class="side">' + image("circuit", circuit.circuit_figure(edges, group_size=group_size))
            + html_table(table, "circuit-table") + "</div>")
    body += ('<div class="edge-diagnostic"><h3>Edge diagnostic: how large can a missed edge be?</h3>'
             + diagnostic(edge_diagnosis, edge_suspects, unit="edge") + "</div>")
    return section("circuit", title, body)
