"""The report's circuit figure, from synthetic edge tables (no model, no engine): which edges it draws,
their widths and colours, where the boxes go, and that the page shows it beside the edge table."""

import re

import numpy as np
import pandas as pd
from matplotlib.colors import to_hex
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from atpstar.run.report import SECTIONS, build
from atpstar.run.report.circuit import NEGATIVE, POSITIVE, circuit_edges, draw_circuit


def _parse(name):
    if name == "embed":
        return "embed", -1, -1
    if name == "logits":
        return "logits", 4, -1
    m = re.fullmatch(r"L(\d+)\.(head|attn|mlp|q|k|v)(?:\.[HG](\d+))?", name)
    return m[2], int(m[1]), int(m[3]) if m[3] else -1


def table(rows):
    """Tidy edge table from (writer, reader, pos, effect, effect_exact), ranked by |effect|."""
    out = []
    for w, r, t, e, ex in rows:
        wk, wl, wu = _parse(w)
        rk, rl, ru = _parse(r)
        out.append(dict(name=f"{w}@{t} -> {r}@{t}", writer=w, reader=r, pos=t, writer_layer=wl, writer_kind=wk,
                        writer_unit=wu, reader_layer=rl, reader_kind=rk, reader_unit=ru, score=abs(e), effect=e,
                        effect_exact=ex))
    frame = pd.DataFrame(out).sort_values("score", ascending=False, ignore_index=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame["token"] = "tok"
    return frame


ROWS = [("embed", "L0.q.H1", 2, 0.4, 0.3), ("embed", "L0.q.H1", 3, 0.2, 0.1), ("L0.head.H1", "L0.mlp", 3, 0.5, 0.6),
        ("L0.mlp", "L2.k.G0", 3, -0.8, -0.9), ("L2.head.H0", "logits", 3, 2.0, 2.5), ("L1.head.H3", "L3.v.G1", 1, 0.05, np.nan),
        ("L3.mlp", "logits", 3, -1.0, np.nan)]


def test_verified_edges_are_drawn_with_exact_effects_summed_over_positions():
    chosen, column = circuit_edges(table(ROWS))
    assert column == "effect_exact"
    got = dict(zip(chosen["writer"] + " -> " + chosen["reader"], chosen["value"]))
    # unverified edges (L1.head.H3 -> L3.v.G1, L3.mlp -> logits) are left out; positions are summed
    assert got == {"L2.head.H0 -> logits": 2.5, "L0.mlp -> L2.k.G0": -0.9, "L0.head.H1 -> L0.mlp": 0.6,
                   "embed -> L0.q.H1": 0.4}
    assert list(got) == ["L2.head.H0 -> logits", "L0.mlp -> L2.k.G0", "L0.head.H1 -> L0.mlp", "embed -> L0.q.H1"]


def test_without_verification_the_top_edges_are_drawn_with_estimates():
    frame = table(ROWS).assign(effect_exact=np.nan)
    chosen, column = circuit_edges(frame, limit=3)
    assert column == "effect" and len(chosen) == 3
    assert chosen["value"].tolist() == [2.0, -1.0, -0.8]


def test_figure_layers_boxes_widths_and_colours():
    fig = draw_circuit(table(ROWS))
    ax = fig.axes[0]
    labels = {t.get_text(): t.get_position() for t in ax.texts}
    assert set(labels) == {"input", "L0 H1", "MLP 0", "L2 H0", "logits"}  # kv groups drawn on their head without GQA
    y = {k: v[1] for k, v in labels.items()}
    assert y["input"] < y["L0 H1"] < y["MLP 0"] < y["L2 H0"] < y["logits"]  # input at the bottom, logits on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input", "layer 0 attn", "layer 0 MLP", "layer 2 attn", "logits"]
    assert sum(isinstance(p, FancyBboxPatch) for p in ax.patches) == 5
    arrows = [p for p in ax.patches if isinstance(p, FancyArrowPatch)]
    assert len(arrows) == 4
    widths = sorted((p.get_linewidth(), to_hex(p.get_edgecolor())) for p in arrows)
    assert widths[-1] == (6.0, POSITIVE)  # the largest |effect| (2.5) is the widest, positive: green
    assert (widths[0][0] < widths[1][0] < widths[2][0]) and NEGATIVE in {c for _, c in widths}
    dashed = [p for p in arrows if p.get_linestyle() not in ("-", "solid")]
    assert len(dashed) == 1  # the one edge into a key


def test_gqa_key_value_readers_get_their_own_boxes():
    fig = draw_circuit(table(ROWS), gqa=True)
    assert "L2 kv G0" in {t.get_text() for t in fig.axes[0].texts}


def test_page_has_the_circuit_beside_the_edge_table(tmp_path):
    edges = table(ROWS)
    meta = {"config": {"methods": ["atp*"], "model": "m", "task": "ioi", "kinds": "all", "seed": 0, "level": "edges"},
            "stages": {"pairs": {"tokens": ["a", "b", "c", "d"], "n": 2},
                       "edges": {"edges": 1234, "method": "atp*", "n_heads": 4, "n_kv_heads": 4, "verified": 5,
                                 "stopped": "budget"}}, "status": "done"}
    page = build(meta, None, edges=edges)
    assert re.findall(r'<section id="([\w-]+)"', page) == list(SECTIONS)
    circuit = re.search(r'<section id="circuit">(.*?)</section>', page, re.S).group(1)
    assert re.search(r'<div class="side"><img alt="circuit" src="data:image/png;base64,[^"]+">.*<table id="circuit-table"',
                     circuit, re.S)
    names = [n.replace("&gt;", ">") for n in re.findall(r'<td class="t">([^<]*-&gt;[^<]*)</td>', circuit)]
    assert names == edges["name"].tolist()
    assert "1,234 edges" in circuit and "edges verified" in page
    (tmp_path / "page.html").write_text(page)
    nodes_only = build({**meta, "stages": {"pairs": meta["stages"]["pairs"]}}, None, edges=None)
    assert "add <code>--level edges</code>" in nodes_only
