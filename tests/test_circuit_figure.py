"""The report's circuit figure, from synthetic edge tables (no model, no engine): which edges it draws,
their widths and colours, where the boxes go, that no two labels overlap (measured by the renderer), that
the colour key is stated once and is the documented one, that a head's key/value input is linked to
its output at a later position, and that the page shows it beside the edge table."""

import colorsys
import itertools
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex, to_rgb
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from atpstar.run.report import SECTIONS, build
from atpstar.run.report.circuit import INSIDE, KEY, NEGATIVE, POSITIVE, circuit_edges, draw_circuit

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _parse(name):
    if name == "embed":
        return "embed", -1, -1
    if name == "logits":
        return "logits", 4, -1
    m = re.fullmatch(r"L(\d+)\.(head|attn|mlp|q|k|v)(?:\.[HG](\d+))?", name)
    return m[2], int(m[1]), int(m[3]) if m[3] else -1


def table(rows, tokens=None):
    """Tidy edge table from (writer, reader, pos, effect, effect_exact), ranked by |effect|."""
    out = []
    for w, r, t, e, ex in rows:
        wk, wl, wu = _parse(w)
        rk, rl, ru = _parse(r)
        out.append(dict(name=f"{w}@{t} -> {r}@{t}", writer=w, reader=r, pos=t, writer_layer=wl, writer_kind=wk,
                        writer_unit=wu, reader_layer=rl, reader_kind=rk, reader_unit=ru, score=abs(e), effect=e,
                        effect_exact=ex, token=(tokens or {}).get(t, "tok")))
    frame = pd.DataFrame(out).sort_values("score", ascending=False, ignore_index=True)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    return frame


ROWS = [("embed", "L0.q.H1", 2, 0.4, 0.3), ("embed", "L0.q.H1", 3, 0.2, 0.1), ("L0.head.H1", "L0.mlp", 3, 0.5, 0.6),
        ("L0.mlp", "L2.k.G0", 3, -0.8, -0.9), ("L2.head.H0", "logits", 3, 2.0, 2.5), ("L1.head.H3", "L3.v.G1", 1, 0.05, np.nan),
        ("L3.mlp", "logits", 3, -1.0, np.nan)]


def boxes(fig):
    """Box label -> [(x, y) centres] (a component appears once per position)."""
    out = {}
    for t in fig.axes[0].texts:
        out.setdefault(t.get_text(), []).append(tuple(float(v) for v in t.get_position()))
    return out


def arrows(fig, color=None):
    got = [p for p in fig.axes[0].patches if isinstance(p, FancyArrowPatch)]
    return [p for p in got if color is None or to_hex(p.get_edgecolor()) == color]


def test_verified_edges_are_drawn_with_exact_effects_position_by_position():
    chosen, column = circuit_edges(table(ROWS))
    assert column == "effect_exact"
    got = {f"{w}@{p} -> {r}": v for w, r, p, v in zip(chosen["writer"], chosen["reader"], chosen["pos"], chosen["value"])}
    # unverified edges (L1.head.H3 -> L3.v.G1, L3.mlp -> logits) are left out; each position is its own edge
    assert got == {"L2.head.H0@3 -> logits": 2.5, "L0.mlp@3 -> L2.k.G0": -0.9, "L0.head.H1@3 -> L0.mlp": 0.6,
                   "embed@2 -> L0.q.H1": 0.3, "embed@3 -> L0.q.H1": 0.1}
    assert list(got)[:3] == ["L2.head.H0@3 -> logits", "L0.mlp@3 -> L2.k.G0", "L0.head.H1@3 -> L0.mlp"]
    assert chosen["token"].tolist() == ["tok"] * 5


def test_without_verification_the_top_edges_are_drawn_with_estimates():
    frame = table(ROWS).assign(effect_exact=np.nan)
    chosen, column = circuit_edges(frame, limit=3)
    assert column == "effect" and len(chosen) == 3
    assert chosen["value"].tolist() == [2.0, -1.0, -0.8]


def test_figure_columns_rows_widths_and_colours():
    fig = draw_circuit(table(ROWS, tokens={2: " Mary", 3: " John"}))
    ax = fig.axes[0]
    where = boxes(fig)
    # without GQA a key reader is its head's own box; the input and L0 H1 appear at both positions
    assert {k: len(v) for k, v in where.items()} == {"input": 2, "L0 H1": 2, "MLP 0": 1, "L2 H0": 1, "logits": 1}
    y = {k: v[0][1] for k, v in where.items()}
    assert y["input"] < y["L0 H1"] < y["MLP 0"] < y["L2 H0"] < y["logits"]  # input at the bottom, logits on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["input", "layer 0 attn", "layer 0 MLP", "layer 2 attn", "logits"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["pos 2\n' Mary'", "pos 3\n' John'"]
    x_of = {x for x, _ in where["input"]}
    assert len(x_of) == 2 and where["logits"][0][0] == max(x_of)  # the logits sit in the later position's column
    assert sum(isinstance(p, FancyBboxPatch) for p in ax.patches) == 7
    signed = [p for p in arrows(fig) if to_hex(p.get_edgecolor()) in (POSITIVE, NEGATIVE)]
    assert len(signed) == 5
    widths = sorted((p.get_linewidth(), to_hex(p.get_edgecolor())) for p in signed)
    assert widths[-1] == (6.0, POSITIVE)  # the largest |effect| (2.5) is the widest, positive: green
    assert widths[0][0] < widths[1][0] < widths[2][0] and [c for _, c in widths].count(NEGATIVE) == 1
    dashed = [p for p in signed if p.get_linestyle() not in ("-", "solid")]
    assert len(dashed) == 1  # the one edge into a key


def test_gqa_key_value_readers_get_their_own_boxes_linked_to_their_group_heads():
    fig = draw_circuit(table(ROWS), group_size=2)
    where = boxes(fig)
    assert "L2 kv G0" in where and where["L2 kv G0"][0][1] == where["L2 H0"][0][1]  # same row, its own box
    (inside,) = arrows(fig, INSIDE)  # G0 serves H0 and H1; only H0 writes, at the same position
    start, end = _ends(inside)
    assert _near(start, where["L2 kv G0"][0]) and _near(end, where["L2 H0"][0])


def _ends(arrow):
    vertices = arrow.get_path().vertices
    return vertices[0], vertices[len(vertices) // 2]


def _near(point, centre, slack=0.5):
    return abs(point[0] - centre[0]) <= slack and abs(point[1] - centre[1]) <= slack


ROUTE = [("L0.mlp", "L2.k.G0", 1, 0.7, 0.7), ("L1.head.H1", "L2.q.H0", 4, -0.3, -0.3), ("L2.head.H0", "logits", 4, 1.5, 1.5),
         ("L0.mlp", "L2.v.G1", 2, 0.2, 0.2), ("L2.head.H1", "L3.mlp", 2, 0.4, 0.4), ("L2.head.H1", "logits", 4, -0.6, -0.6)]


def test_a_route_across_positions_key_at_the_name_query_and_output_at_the_last_token():
    fig = draw_circuit(table(ROUTE, tokens={1: " Mary", 2: " went", 4: " to"}))
    where = boxes(fig)
    head0 = sorted(where["L2 H0"])  # the head's key input at position 1 and its query input and output at position 4
    assert len(head0) == 2 and head0[0][1] == head0[1][1]
    links = arrows(fig, INSIDE)
    # H0: key at 1 -> output at 4; H1: value at 2 -> its outputs at 2 (the same box: no link) and 4
    assert len(links) == 2
    ends = [_ends(a) for a in links]
    assert any(_near(s, head0[0]) and _near(e, head0[1]) for s, e in ends)
    head1 = sorted(where["L2 H1"])
    assert any(_near(s, head1[0]) and _near(e, head1[1]) for s, e in ends)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("grey: inside one head") for t in legend)


def test_whole_layer_attention_writes_are_linked_from_every_head_input_of_the_layer():
    rows = [("L0.mlp", "L2.k.G1", 1, 0.5, 0.5), ("embed", "L2.q.H0", 3, 0.2, 0.2), ("L2.attn", "logits", 3, 1.0, 1.0)]
    fig = draw_circuit(table(rows))
    where = boxes(fig)
    assert "L2 attn" in where
    assert len(arrows(fig, INSIDE)) == 2  # the key of H1 at 1 and the query of H0 at 3, both into the write at 3


def crowded():
    """Nine heads of one layer and their three key-value groups at the last token, long tokens, several layers."""
    rows = [(f"L5.head.H{h}", "logits", 9, (-1) ** h * (1 + h / 10), (-1) ** h * (1 + h / 10)) for h in range(9)]
    rows += [(f"L3.head.H{h}", f"L5.k.G{h % 3}", 9, 0.3 + h / 50, 0.3 + h / 50) for h in range(6)]
    rows += [("L0.mlp", f"L5.v.G{g}", t, 0.2 + g / 20 + t / 100, 0.2) for g in range(3) for t in (1, 2, 3)]
    rows += [("embed", "L0.mlp", t, 0.25, 0.25) for t in (1, 2, 3)]
    return table(rows, tokens={1: " Christopherson", 2: " Maximilian", 3: " went", 9: " to"})


@pytest.mark.parametrize("group_size", [1, 3])
def test_no_two_labels_overlap_on_the_rendered_figure(group_size):
    fig = draw_circuit(crowded(), limit=40, group_size=group_size)
    FigureCanvasAgg(fig).draw()  # lays out the legend and tick labels
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]
    assert len(labels) >= 12
    ticks = [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
    legend = list(fig.legends[0].get_texts())
    texts = labels + ticks + legend + [ax.title]
    extents = [t.get_window_extent(renderer) for t in texts]
    for (a, ea), (b, eb) in itertools.combinations(zip(texts, extents), 2):
        assert not ea.overlaps(eb), f"{a.get_text()!r} overlaps {b.get_text()!r}"
    frames = [p for p in ax.patches if isinstance(p, FancyBboxPatch)]
    assert len(frames) == len(labels)
    for (a, ea), (b, eb) in itertools.combinations([(p, p.get_window_extent(renderer)) for p in frames], 2):
        assert not ea.overlaps(eb)
    for text in labels:  # each label inside its own box
        inside = [p for p in frames if p.get_window_extent(renderer).contains(*ax.transData.transform(text.get_position()))]
        (box,) = inside
        outer, inner = box.get_window_extent(renderer), text.get_window_extent(renderer)
        assert outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1


def _hue(color):
    return colorsys.rgb_to_hsv(*to_rgb(color))[0] * 360


def test_one_colour_key_stated_once_and_the_documented_one():
    fig = draw_circuit(table(ROWS))
    assert len(fig.legends) == 1 and fig.axes[0].get_legend() is None  # one key
    handles = fig.legends[0].legend_handles
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [to_hex(h.get_color()) for h in handles[:2]] == [POSITIVE, NEGATIVE]
    assert texts[:2] == ["green: " + KEY[0], "red: " + KEY[1]]
    assert 90 <= _hue(POSITIVE) <= 150 and (_hue(NEGATIVE) <= 15 or _hue(NEGATIVE) >= 345)  # green and red indeed
    assert not any(w in fig.axes[0].get_title().lower() for w in ("green", "red", "blue"))  # not repeated in the title
    for doc, heading in (("edges.md", "## The circuit in the report"), ("edges_evidence.md", "## The circuit")):
        text = (DOCS / doc).read_text()
        section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
        assert "green" in section and "red" in section and "blue" not in section, doc
        assert re.search(r"green[^.;]*raises", section) and re.search(r"red[^.;]*lowers", section), doc


def test_page_has_the_circuit_beside_the_edge_table(tmp_path):
    edges = table(ROWS)
    meta = {"config": {"methods": ["atp*"], "model": "m", "task": "ioi", "kinds": "all", "seed": 0, "level": "edges"},
            "stages": {"pairs": {"tokens": ["a", "b", "c", "d"], "n": 2},
                       "edges": {"edges": 1234, "method": "atp*", "n_heads": 4, "n_kv_heads": 2, "verified": 5,
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
