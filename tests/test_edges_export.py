"""Edge export: the EAP-IG / MIB graph JSON (format of EAP-IG's ``Graph.to_json``, MIB's sign: score =
-effect) and TransformerLens hook names, from synthetic tidy edge tables (no model, no engine needed)."""

import json
import re

import numpy as np
import pandas as pd
import pytest
from conftest import planted_edge_effects

from atpstar.edges.export import eap_edge_names, from_eap_graph, to_eap_graph, write_eap_json
from atpstar.edges.tl_hooks import TLHook, tl_edge_hooks, tl_hook

CFG = {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 8, "n_key_value_heads": 2}


def table(rows):
    """A tidy edge table (the contract's columns that export reads) from (writer, reader, pos, effect)."""
    frame = pd.DataFrame(rows, columns=["writer", "reader", "pos", "effect"])
    frame["name"] = [f"{w}@{t} -> {r}@{t}" for w, r, t in zip(frame.writer, frame.reader, frame.pos)]
    frame["score"] = frame["effect"].abs()
    return frame


def test_eap_graph_has_every_edge_of_eap_igs_graph_in_its_order():
    names = eap_edge_names(CFG)
    L, H = 2, 4
    # EAP-IG's counts: forward nodes 1 + L(H+1), edges into each head's q/k/v from every earlier writer
    n_edges = sum(3 * H * (1 + l * (H + 1)) + (1 + l * (H + 1) + H) for l in range(L)) + 1 + L * (H + 1)
    assert len(names) == len(set(names)) == n_edges
    assert names[0] == "input->a0.h0<q>" and names[-1] == "m1->logits"
    assert "a0.h3->m0" in names and "m0->a0.h1<q>" not in names and "a1.h0->a0.h0<k>" not in names
    assert all(re.fullmatch(r"(input|a\d\.h\d|m\d)->(a\d\.h\d<[qkv]>|m\d|logits)", n) for n in names)
    parallel = eap_edge_names({**CFG, "parallel_attn_mlp": True})
    assert "a0.h3->m0" not in parallel and "input->m0" in parallel


def test_json_format_and_sums_over_positions():
    edges = table([("embed", "L0.q.H2", 3, 0.5), ("embed", "L0.q.H2", 4, -0.2), ("L0.head.H1", "L1.mlp", 4, 1.5),
                   ("L0.mlp", "logits", 4, -2.0), ("L1.head.H3", "logits", 2, 0.25), ("L1.head.H3", "logits", 4, np.nan)])
    g = to_eap_graph(edges, CFG)
    assert set(g) == {"cfg", "nodes", "edges"}
    assert g["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 8, "n_key_value_heads": 2}
    assert "n_key_value_heads" not in to_eap_graph(edges, {**CFG, "n_key_value_heads": 4})["cfg"]
    assert list(g["nodes"]) == ["input"] + [f"a0.h{h}" for h in range(4)] + ["m0"] + [f"a1.h{h}" for h in range(4)] + ["m1", "logits"]
    assert all(set(v) == {"in_graph"} for v in g["nodes"].values())
    assert all(set(v) == {"score", "in_graph"} for v in g["edges"].values())
    e = g["edges"]
    # MIB's importance: -effect, summed over positions (0.5 - 0.2)
    assert e["input->a0.h2<q>"] == {"score": pytest.approx(-0.3), "in_graph": True}
    assert e["a0.h1->m1"]["score"] == -1.5 and e["m0->logits"]["score"] == 2.0
    assert e["a1.h3->logits"] == {"score": -0.25, "in_graph": True}  # NaN counts as 0, a finite row makes it a member
    assert sum(v["in_graph"] for v in e.values()) == 4
    assert sum(v["score"] for v in e.values()) == pytest.approx(-np.nansum(edges["effect"]))
    assert to_eap_graph(edges, CFG, negate=False)["edges"]["m0->logits"]["score"] == -2.0
    assert e["input->a0.h0<q>"] == {"score": 0.0, "in_graph": False}
    in_nodes = {n for n, v in g["nodes"].items() if v["in_graph"]}
    assert in_nodes == {"input", "a0.h2", "a0.h1", "m1", "m0", "a1.h3", "logits"}
    json.dumps(g, allow_nan=False)  # strict JSON: no NaN


def test_gqa_key_and_value_readers_split_over_their_query_heads_and_round_trip():
    edges = table([("L0.head.H0", "L1.k.G1", 2, 0.8), ("L0.head.H0", "L1.k.G1", 3, 0.4), ("embed", "L1.v.G0", 0, -0.6),
                   ("L0.mlp", "L1.q.H3", 1, 0.1)])
    g = to_eap_graph(edges, CFG)
    e = g["edges"]
    # group 1 of 2 serves query heads 2 and 3: 1.2 split evenly
    assert e["a0.h0->a1.h2<k>"]["score"] == pytest.approx(-0.6) == e["a0.h0->a1.h3<k>"]["score"]
    assert e["a0.h0->a1.h0<k>"] == {"score": 0.0, "in_graph": False}
    assert e["input->a1.h0<v>"]["score"] == pytest.approx(0.3) == e["input->a1.h1<v>"]["score"]
    back = from_eap_graph(g).set_index("name")
    summed = edges.groupby(["writer", "reader"])["effect"].sum()
    for (w, r), value in summed.items():
        assert back.loc[f"{w} -> {r}", "effect"] == pytest.approx(value)
        assert back.loc[f"{w} -> {r}", "in_graph"]
    assert back["in_graph"].sum() == len(summed)  # the edge set round-trips
    assert (back["pos"] == -1).all()


def test_written_json_reads_back_and_in_graph_can_be_chosen(tmp_path):
    edges = table([("embed", "L0.q.H0", 0, 1.0), ("L0.head.H0", "logits", 0, 0.1)])
    edges["verified"] = [True, False]
    path = write_eap_json(edges, CFG, tmp_path / "ioi_smollm" / "graph.json", in_graph="verified")
    g = json.loads(path.read_text())
    assert g["edges"]["input->a0.h0<q>"]["in_graph"] and not g["edges"]["a0.h0->logits"]["in_graph"]
    assert g["edges"]["a0.h0->logits"]["score"] == -0.1
    back = from_eap_graph(path)
    assert back.set_index("name").loc["L0.head.H0 -> logits", "effect"] == 0.1  # atpstar's sign read back
    assert set(back.loc[back["in_graph"], "name"]) == {"embed -> L0.q.H0"}
    chosen = to_eap_graph(edges, CFG, in_graph={"a0.h0->logits"})
    assert [n for n, v in chosen["edges"].items() if v["in_graph"]] == ["a0.h0->logits"]
    with pytest.raises(ValueError, match="unknown EAP-IG edge"):
        to_eap_graph(edges, CFG, in_graph={"a9.h0->logits"})


def test_edges_eap_ig_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="not an edge of EAP-IG"):
        to_eap_graph(table([("L1.head.H0", "L0.mlp", 0, 1.0)]), CFG)
    with pytest.raises(ValueError, match="not a reader"):
        to_eap_graph(table([("embed", "L0.z.H0", 0, 1.0)]), CFG)


def test_edge_names_without_writer_reader_columns():
    edges = table([("L0.mlp", "L1.v.G1", 5, 2.0)])[["name", "effect"]]
    assert to_eap_graph(edges, CFG)["edges"]["m0->a1.h2<v>"]["score"] == -1.0


@pytest.mark.parametrize("name, role, hook", [
    # node names
    ("L3.q.H5@12", None, TLHook("blocks.3.attn.hook_q", 5, 12)),
    ("L3.k.G1@2", None, TLHook("blocks.3.attn.hook_k", 1, 2)),
    ("L3.v.G0", None, TLHook("blocks.3.attn.hook_v", 0, None)),
    ("L0.head.H7@4", None, TLHook("blocks.0.attn.hook_z", 7, 4)),
    ("L2.neuron.N40@1", None, TLHook("blocks.2.mlp.hook_post", 40, 1)),
    # writers
    ("L0.head.H7@4", "writer", TLHook("blocks.0.attn.hook_result", 7, 4)),
    ("embed@4", None, TLHook("hook_embed", None, 4)),
    ("L5.attn@3", None, TLHook("blocks.5.hook_attn_out", None, 3)),
    ("L29.mlp@17", "writer", TLHook("blocks.29.hook_mlp_out", None, 17)),
    # readers
    ("L7.q.H3@12", "reader", TLHook("blocks.7.hook_q_input", 3, 12)),
    ("L7.k.G1@12", "reader", TLHook("blocks.7.hook_k_input", 1, 12)),
    ("L7.v.G0@1", "reader", TLHook("blocks.7.hook_v_input", 0, 1)),
    ("L29.mlp@17", "reader", TLHook("blocks.29.hook_mlp_in", None, 17)),
    ("logits@17", None, TLHook("blocks.29.hook_resid_post", None, 17)),
])
def test_transformerlens_hooks_of_names(name, role, hook):
    assert tl_hook(name, n_layers=30, role=role, group_size=1) == hook  # no GQA: a key-value head is a head


def test_transformerlens_key_value_hooks_under_gqa_are_the_query_heads_of_the_group():
    """TransformerLens with ungrouped attention (as EAP-IG and MIB run it) has one key/value input per query
    head: key-value head 1 of a model with 3 query heads per group is query heads 3, 4, 5."""
    assert tl_hook("L7.k.G1@12", role="reader", group_size=3) == TLHook("blocks.7.hook_k_input", slice(3, 6), 12)
    assert tl_hook("L7.v.G0", role="reader", group_size=3).index == (slice(None), slice(None), slice(0, 3))
    assert tl_hook("L3.k.G1@2", group_size=3) == TLHook("blocks.3.attn.hook_k", slice(3, 6), 2)  # the node
    assert tl_hook("L7.q.H4@1", role="reader", group_size=3) == TLHook("blocks.7.hook_q_input", 4, 1)
    assert tl_hook("L7.k.H4@1", role="reader") == TLHook("blocks.7.hook_k_input", 4, 1)  # a per-query-head reader
    _, r = tl_edge_hooks("L3.head.H5@12 -> L7.k.G1@12", n_layers=30, group_size=2)
    assert r == TLHook("blocks.7.hook_k_input", slice(2, 4), 12)
    with pytest.raises(ValueError, match="give group_size"):
        tl_hook("L7.k.G1@12", role="reader")
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        tl_hook("L7.k.G1@12", role="reader", group_size=0)


def test_transformerlens_hooks_of_edges():
    w, r = tl_edge_hooks("L3.head.H5@12 -> L7.k.G1@12", n_layers=30, group_size=1)
    assert w == TLHook("blocks.3.attn.hook_result", 5, 12) and r == TLHook("blocks.7.hook_k_input", 1, 12)
    assert r.index == (slice(None), 12, 1)
    w, r = tl_edge_hooks("L29.mlp@17 -> logits@17", n_layers=30)
    assert w.hook == "blocks.29.hook_mlp_out" and r.hook == "blocks.29.hook_resid_post" and r.index == (slice(None), 17)
    w, r = tl_edge_hooks("embed@4 -> L0.q.H2@4")
    assert w == TLHook("hook_embed", None, 4) and r == TLHook("blocks.0.hook_q_input", 2, 4)
    with pytest.raises(ValueError, match="n_layers"):
        tl_edge_hooks("L0.mlp@1 -> logits@1")
    with pytest.raises(ValueError, match="not an edge"):
        tl_edge_hooks("L0.mlp@1")
    with pytest.raises(ValueError, match="not a node, writer or reader"):
        tl_hook("L0.foo.H1")
    with pytest.raises(ValueError, match="both a writer and a reader"):
        tl_hook("L3.mlp@2")
    with pytest.raises(ValueError, match="not a writer"):
        tl_edge_hooks("logits@1 -> L0.mlp@1", n_layers=2)


def _synthetic_scores(graddrop_factor=None):
    from types import SimpleNamespace

    from atpstar.edges import EdgeGraph, EdgeScores
    from atpstar.substrate.arch import ARCHS

    model = SimpleNamespace(name="m", n_layers=2, n_heads=4, n_kv_heads=2, arch=ARCHS["llama"])
    graph = EdgeGraph.of(model)
    effect = planted_edge_effects(graph, 3)
    score = effect.abs() if graddrop_factor is None else effect.abs() * graddrop_factor
    return graph, effect, EdgeScores("atp*", graph, effect, score, 1)


def test_eap_graph_of_edge_scores_sums_every_position_with_mibs_sign():
    from atpstar.edges.export import eap_graph_of

    graph, effect, scores = _synthetic_scores()
    g = eap_graph_of(scores, d_model=8, circuit=5)
    assert g["cfg"] == CFG
    assert sum(v["in_graph"] for v in g["edges"].values()) == 5
    w, r = graph.writer_names.index("L0.head.H1"), graph.reader_names.index("L1.q.H2")
    assert g["edges"]["a0.h1->a1.h2<q>"]["score"] == pytest.approx(-float(effect[w, r].sum()))
    w, r = graph.writer_names.index("embed"), graph.reader_names.index("L1.k.G1")
    assert g["edges"]["input->a1.h2<k>"]["score"] == pytest.approx(-float(effect[w, r].sum()) / 2)
    total = sum(v["score"] for v in g["edges"].values())
    assert total == pytest.approx(-float(effect.nansum()))  # every edge at every position, once
    chosen = eap_graph_of(scores, 8, circuit=["L0.head.H1@2 -> L1.q.H2@2"])
    assert [n for n, v in chosen["edges"].items() if v["in_graph"]] == ["a0.h1->a1.h2<q>"]


def test_eap_graph_of_writes_verified_exact_effects_and_can_carry_the_ranking_score():
    from atpstar.edges.export import eap_graph_of

    graph, effect, scores = _synthetic_scores(graddrop_factor=3.0)  # a GradDrop-like score, 3x |effect|
    w, r = graph.writer_names.index("L0.mlp"), graph.reader_names.index("L1.q.H0")
    verified = pd.DataFrame({"name": ["L0.mlp@1 -> L1.q.H0@1", "L0.mlp@2 -> L1.q.H0@2"],
                             "effect_exact": [10.0, np.nan]})  # NaN: not verified, the estimate stays
    g = eap_graph_of(scores, 8, verified=verified)
    expected = float(effect[w, r, 0] + 10.0 + effect[w, r, 2])
    assert g["edges"]["m0->a1.h0<q>"]["score"] == pytest.approx(-expected)
    ranked = eap_graph_of(scores, 8, verified=verified, score="ranking")
    value = lambda t: float(3.0 * effect[w, r, t])  # noqa: E731 - sign(effect) * |score|
    assert ranked["edges"]["m0->a1.h0<q>"]["score"] == pytest.approx(-(value(0) + 10.0 + value(2)))
    w2, r2 = graph.writer_names.index("embed"), graph.reader_names.index("logits")
    assert ranked["edges"]["input->logits"]["score"] == pytest.approx(-3.0 * float(effect[w2, r2].sum()))
    with pytest.raises(ValueError, match="choose from"):
        eap_graph_of(scores, 8, score="importance")
    with pytest.raises(ValueError, match="unknown writer"):
        eap_graph_of(scores, 8, verified=pd.DataFrame({"name": ["L9.mlp@1 -> logits@1"], "effect_exact": [1.0]}))


@pytest.mark.parametrize("content, message", [
    ('{"cfg": {"n_layers": 2', r"bad\.json is not valid JSON \(Expecting .*line 1 column"),
    ('{"a": 1}', r"bad\.json is not an EAP-IG graph: it lacks \['cfg', 'nodes', 'edges'\]"),
    ('[1, 2]', r"bad\.json is not an EAP-IG graph"),
    ('{"cfg": {"n_heads": 2}, "nodes": {}, "edges": {}}', r"its cfg lacks \['n_layers'\]"),
    ('{"cfg": {"n_heads": 2, "n_layers": 1}, "nodes": {}, "edges": {"a0.h0-logits": {"score": 1}}}',
     r"edge 'a0.h0-logits' is not an EAP-IG edge entry"),
    ('{"cfg": {"n_heads": 2, "n_layers": 1}, "nodes": {}, "edges": {"x9->logits": {"score": 1}}}',
     r"'x9' is not an EAP-IG node name"),
])
def test_from_eap_graph_bad_input_names_the_file_and_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        from_eap_graph(path)


def test_from_eap_graph_bad_objects():
    with pytest.raises(ValueError, match=r"the graph dict is not an EAP-IG graph: it lacks \['cfg'\]"):
        from_eap_graph({"nodes": {}, "edges": {}})
    with pytest.raises(ValueError, match="a dict or the path of its JSON file, not list"):
        from_eap_graph([1, 2])
    with pytest.raises(FileNotFoundError, match="no such EAP-IG graph file"):
        from_eap_graph("/nonexistent/graph.json")
