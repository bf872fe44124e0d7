"""The edge vocabulary: writers, readers, which edges exist, names, tables and groupings."""

import pytest
import torch

from atpstar.edges import EdgeGraph, EdgeScores, EdgeSet
from conftest import tiny_model


def test_llama_graph_order_and_validity():
    g = EdgeGraph.of(tiny_model("llama"))  # 3 layers, 6 heads, 2 kv heads
    assert g.writer_names[:8] == ("embed", *(f"L0.head.H{h}" for h in range(6)), "L0.mlp")
    assert g.n_writers == 1 + 3 * 7 and g.n_readers == 3 * (6 + 2 + 2 + 1) + 1
    assert g.reader_names[:11] == (*(f"L0.q.H{h}" for h in range(6)), "L0.k.G0", "L0.k.G1", "L0.v.G0", "L0.v.G1",
                                   "L0.mlp")
    assert g.reader_names[-1] == "logits" and g.per_head
    w, r = g.writer_index(["L0.head.H2", "L0.mlp", "embed"]), g.reader_index(["L0.mlp", "L1.k.G1", "logits"])
    assert g.valid[w[0], r[0]] and g.valid[w[1], r[1]] and g.valid[w[2], r[2]]
    assert not g.valid[w[1], r[0]]  # MLP 0 does not feed itself
    assert not g.valid[g.writer_index(["L1.mlp"])[0], g.reader_index(["L1.q.H0"])[0]]
    # count: every writer feeds every reader of later layers, attention feeds its own MLP
    per_layer_readers = 11
    expected = (1 * (3 * per_layer_readers + 1)
                + sum(6 * ((2 - l) * per_layer_readers + 1 + 1) + ((2 - l) * per_layer_readers + 1) for l in range(3)))
    assert g.n_edges() == expected


def test_parallel_residual_and_gemma():
    neox = EdgeGraph.of(tiny_model("gpt_neox"))
    assert neox.parallel_residual
    with pytest.raises(ValueError, match="parallel-residual"):
        EdgeSet.from_names(neox, ["L1.head.H0@2 -> L1.mlp@2"])
    gpt2 = EdgeGraph.of(tiny_model("gpt2"))
    assert len(EdgeSet.from_names(gpt2, ["L1.head.H0@2 -> L1.mlp@2"])) == 1
    gemma = EdgeGraph.of(tiny_model("gemma3"))
    assert not gemma.per_head and "L0.attn" in gemma.writer_names and "L0.head.H0" not in gemma.writer_names
    with pytest.raises(ValueError, match="not a sum over heads"):
        EdgeGraph.of(tiny_model("gemma3"), per_head=True)
    with pytest.raises(ValueError, match="whole layers"):
        EdgeSet.from_names(gemma, ["L0.head.H1@3 -> L2.q.H0@3"])
    assert len(EdgeSet.from_names(gemma, ["L0.attn@3 -> L0.mlp@3"])) == 1


def test_names_round_trip_and_errors():
    g = EdgeGraph.of(tiny_model("llama"))
    names = ["L0.head.H5@6 -> L2.k.G1@6", "embed@4 -> L0.q.H2@4", "L2.mlp@0 -> logits@0"]
    edges = EdgeSet.from_names(g, names)
    assert edges.names(g) == names
    assert EdgeSet.from_ids(g, edges.ids(g, 7), 7).names(g) == names
    for bad, match in [("L0.head.H5@6 - L2.k.G1@6", "cannot parse"), ("L0.head.H5@6 -> L2.k.G1@5", "two positions"),
                       ("L0.head.H9@6 -> L2.k.G1@6", "unknown writer 'L0.head.H9'"),
                       ("L0.mlp@1 -> L2.k.G7@1", "unknown reader 'L2.k.G7'"),
                       ("L2.head.H0@1 -> L1.q.H0@1", "reads the residual stream before"),
                       ("L1.mlp@1 -> L1.mlp@1", "MLP reads its own layer's input")]:
        with pytest.raises(ValueError, match=match):
            EdgeSet.from_names(g, [bad])
    with pytest.raises(IndexError, match="out of range 0..6"):
        EdgeSet.parse(g, ["embed@7 -> logits@7"], n_pos=7)
    with pytest.raises(TypeError, match="wrap it in a list"):
        EdgeSet.parse(g, "embed@1 -> logits@1")
    every = EdgeSet.every(g, 5)
    assert len(every) == g.n_edges(5) and g.valid[every.writer, every.reader].all()


def _scores(g, n_pos=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    per_pair = torch.randn(2, g.n_writers, g.n_readers, n_pos, generator=gen)
    per_pair[:, ~g.valid] = torch.nan
    return EdgeScores("test", g, per_pair.mean(0), per_pair.abs().mean(0), 2, per_pair)


def test_frame_top_and_groupings():
    g = EdgeGraph.of(tiny_model("llama"))
    s = _scores(g)
    df = s.to_frame()
    assert len(df) == g.n_edges(3) and list(df.columns)[:4] == ["name", "writer", "reader", "pos"]
    assert df["score"].is_monotonic_decreasing
    top = s.top(5)
    assert top["name"].tolist() == df["name"].head(5).tolist()
    row = df.iloc[0]
    w, r = g.writer_index([row.writer])[0], g.reader_index([row.reader])[0]
    assert row["score"] == pytest.approx(float(s.score[w, r, row.pos])) and row["name"] == EdgeSet.from_names(
        g, [row["name"]]).names(g)[0]
    assert set(df["writer_kind"]) == {"embed", "head", "mlp"} and set(df["reader_kind"]) == {"q", "k", "v", "mlp", "logits"}
    assert s.edges(3).names(g) == df["name"].head(3).tolist()
    pos = s.group("positions")
    assert (pos["pos"] == -1).all() and len(pos) == g.n_edges()
    one = pos[pos["name"] == "L0.head.H1 -> L2.q.H3"].iloc[0]
    w, r = g.writer_index(["L0.head.H1"])[0], g.reader_index(["L2.q.H3"])[0]
    assert one["effect"] == pytest.approx(float(s.effect[w, r].sum()), rel=1e-5)
    assert one["score"] == pytest.approx(float(s.per_pair[:, w, r].sum(-1).abs().mean()), rel=1e-5)
    heads = s.group("heads", "positions")
    one = heads[heads["name"] == "L0.mlp -> L1.head.G1"].iloc[0]
    readers = g.reader_index(["L1.q.H3", "L1.q.H4", "L1.q.H5", "L1.k.G1", "L1.v.G1"])
    w = g.writer_index(["L0.mlp"])[0]
    assert one["effect"] == pytest.approx(float(s.effect[w][readers].sum()), rel=1e-5)
    assert one["reader_kind"] == "head" and one["reader_unit"] == 1
    merged = heads[heads["reader_kind"] == "head"]
    assert set(merged["reader"]) == {f"L{l}.head.G{g}" for l in range(3) for g in range(2)}
    assert heads["score"].is_monotonic_decreasing and heads["name"].is_unique
