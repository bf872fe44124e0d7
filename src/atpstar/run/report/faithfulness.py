"""The report's faithfulness section (``--faithfulness``): the edge ranking's faithfulness curves at MIB's
grid, a small table of them with CPR, CMD and the smallest 80 % / 90 % circuits, and a caption that says
what f, CPR and CMD are and which ranking was scored. Reads ``stages/faithfulness.json`` only."""

from __future__ import annotations

import html

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .figures import to_data_uri

SIGNED, ABSOLUTE = "#1f5fbf", "#d9730d"


def curves_figure(card: dict) -> str:
    """f against the share of edges (log axis), one line per ranking, the smallest circuits marked."""
    signed, absolute = card["mib"]["signed"], card["mib"]["absolute"]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    x = 100 * np.asarray(signed["grid"], dtype=float)
    ax.plot(x, signed["f"], marker="o", ms=4, color=SIGNED, label=f"signed ranking (CPR {card['mib']['cpr']:.3f})")
    ax.plot(x, absolute["f"], marker="s", ms=4, color=ABSOLUTE,
            label=f"absolute ranking (CMD {card['mib']['cmd']:.3f})")
    total = max(signed["requested"][-1], 1)
    for found in card.get("smallest", []):
        if found["n"] is not None:
            ax.plot(100 * found["n"] / total, found["f"], marker="*", ms=12, color=ABSOLUTE, ls="none")
        ax.axhline(found["threshold"], color="#999", lw=0.7, ls=":")
    ax.axhline(1.0, color="#555", lw=0.8, ls="--")
    ax.axhline(0.0, color="#ccc", lw=0.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("circuit size: % of all edges (top of the ranking, then pruned)")
    ax.set_ylabel("faithfulness f")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return to_data_uri(fig)


def caption(card: dict, metric: str) -> str:
    total = card["mib"]["signed"]["requested"][-1]
    return (
        "<p class=\"note\"><b>f</b>(C) = (m(C) − m(∅)) / (m(full) − m(∅)): the share of the behaviour a circuit C "
        f"carries alone. m is the metric ({esc(metric)}) averaged over the pairs; in C's run every edge outside C "
        "reads the noise prompt's value, so m(full) is the clean run's metric "
        f"({card['m_full']:.4g}) and m(∅) the noise run's ({card['m_empty']:.4g}). The circuits are the top "
        f"0.1 % … 100 % of all {total:,} edges of <b>{esc(card['ranking'])}</b>, each pruned to the edges on a path "
        "from the input to the logits, as the MIB benchmark does. <b>CPR</b> (higher is better) is the area under "
        "f of the signed ranking (edges whose patching hurts the metric most first); <b>CMD</b> (lower is better) "
        "the area under |1 − f| of the ranking by absolute score; both by trapezoids over the fraction of edges "
        "on a linear axis (the figure's axis is logarithmic). Stars: the smallest circuits of the absolute "
        "ranking found with f ≥ 0.8 and ≥ 0.9.</p>")


def table(card: dict) -> str:
    signed, absolute = card["mib"]["signed"], card["mib"]["absolute"]
    head = ("<tr><th>% of edges</th><th>edges</th><th>kept (signed)</th><th>f signed</th>"
            "<th>kept (absolute)</th><th>f absolute</th></tr>")
    rows = "".join(f"<tr><td>{100 * p:g}</td><td>{n:,}</td><td>{ks:,}</td><td>{fs:.3f}</td><td>{ka:,}</td>"
                   f"<td>{fa:.3f}</td></tr>" for p, n, ks, fs, ka, fa in
                   zip(signed["grid"], signed["requested"], signed["kept"], signed["f"], absolute["kept"], absolute["f"]))
    return f'<table id="faithfulness-table"><thead>{head}</thead><tbody>{rows}</tbody></table>'


def smallest_words(card: dict) -> str:
    items = []
    for found in card.get("smallest", []):
        what = (f"the top {found['n']:,} edges ({found['kept']:,} after pruning), f = {found['f']:.3f}"
                if found["n"] is not None else "no circuit of the curve reaches it")
        items.append(f"<li>smallest circuit with f ≥ {found['threshold']:g}: {esc(what)}</li>")
    return "<ul>" + "".join(items) + "</ul>"


def body(card: dict | None, metric: str) -> str:
    """The section's HTML (a note saying how to get it when the run did not score its circuits)."""
    if card is None:
        return ('<p class="note">Add <code>--faithfulness</code> (with <code>--level edges</code> or '
                "<code>both</code>) to score the edge ranking's circuits as the MIB benchmark does: faithfulness "
                "curves, CPR, CMD and the smallest circuits reaching f ≥ 0.8 and 0.9.</p>")
    if "undefined" in card:
        return f'<p class="note">Faithfulness is undefined for this run: {esc(card["undefined"])}</p>'
    scores = (f"<p>CPR = <b>{card['mib']['cpr']:.4f}</b>, CMD = <b>{card['mib']['cmd']:.4f}</b> "
              f"({card['circuits']:,} circuits evaluated, {card['seconds']:.1f} s)</p>")
    return (caption(card, metric) + scores + smallest_words(card) + '<div class="side">'
            + f'<img alt="faithfulness curves" src="{curves_figure(card)}">' + table(card) + "</div>")


def esc(value) -> str:
    return html.escape(str(value), quote=True)
