"""Edges for EAP-IG and MIB: the graph JSON of EAP-IG's ``Graph.to_json``, written and read back.

EAP-IG's ``Graph.to_json`` (and the MIB circuit-localization track, which reads the same file)
writes ``{"cfg": {...}, "nodes": {name: {"in_graph": bool}}, "edges": {name: {"score": float,
"in_graph": bool}}}`` with nodes ``input``, ``a{L}.h{H}``, ``m{L}``, ``logits`` and edges
``parent->child``, the reader of an attention head named by its input, ``a3.h0->a5.h1<q>``
(``<k>``, ``<v>``). Its edges are summed over positions. Here:

- **the score is MIB's importance**: EAP-IG and MIB score an edge by its effect on the *loss*
  (MIB attributes −metric), so a larger score means "patching this edge hurts the behaviour more".
  atpstar's effect is ``metric(patched) − metric(clean)``, so the score written is **−effect**
  (summed over positions), and :func:`from_eap_graph` reads ``effect = −score`` back;
- writers ``embed`` → ``input``, ``L{l}.head.H{h}`` → ``a{l}.h{h}``, ``L{l}.mlp`` → ``m{l}``; readers
  ``L{l}.q.H{h}`` → ``a{l}.h{h}<q>``, ``L{l}.mlp`` → ``m{l}``, ``logits`` → ``logits``;
- **one of our edges can stand for several of EAP-IG's**: under grouped-query attention our key and
  value readers are per key-value head (``L{l}.k.G{g}``) where EAP-IG's (TransformerLens with
  ungrouped attention) are per query head; a layer's whole attention write ``L{l}.attn`` (Gemma 3,
  whose post-attention norm mixes the heads) is every head of the layer in EAP-IG's graph. Such an
  edge's score is **split evenly** over the EAP-IG edges it stands for, and each of them is in the
  circuit when it is. Even splitting keeps sums: EAP-IG's per-query-head key scores of one group add
  up to the group's (the gradient of the shared key input is the sum of its copies' gradients), so
  summing EAP-IG's scores over a group gives atpstar's, and averaging them gives what is written here.
  :func:`from_eap_graph` adds the parts back (``cfg`` records ``n_key_value_heads`` and
  ``per_head_writers``, keys EAP-IG's loader ignores);
- every edge of the full graph is written (as ``Graph.to_json`` does); those absent from the table get
  score 0 and ``in_graph`` false. A node is in the graph when an in-graph edge touches it; ``logits``
  always is.

:func:`eap_graph_of` writes a run's :class:`~atpstar.edges.EdgeScores` with the exact effects of the
verified edges in place of their estimates; :mod:`atpstar.edges.mib` writes MIB's submission folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .graph import READER_NAME, WRITER_NAME, heads_additive

__all__ = ["EAP_CFG_KEYS", "SCORES", "eap_config", "eap_edge_names", "eap_graph_of", "edge_values", "from_eap_graph",
           "to_eap_graph", "write_eap_json", "write_json"]

EAP_CFG_KEYS = ("n_layers", "n_heads", "parallel_attn_mlp", "d_model")
"""The model facts EAP-IG's ``Graph.from_model`` reads from ``cfg``."""
SCORES = ("effect", "ranking")
"""What :func:`eap_graph_of` writes as the score (always as MIB's importance, −value): ``effect``, the
signed effect (exact where verified, else the method's estimate); ``ranking``, the method's ranking score
(AtP*'s GradDrop score) with the estimate's sign, |exact effect| where verified."""

_EAP_NODE = re.compile(r"^(?:(?P<input>input)|(?P<logits>logits)|a(?P<layer>\d+)\.h(?P<head>\d+)|m(?P<mlp>\d+))$")


def eap_config(model) -> dict:
    """EAP-IG's ``cfg`` for an atpstar ``Model`` (plus ``n_key_value_heads``, which EAP-IG ignores)."""
    return _config(model.n_layers, model.n_heads, model.arch.parallel_residual, model.d_model, model.n_kv_heads,
                   heads_additive(model))


def _config(n_layers, n_heads, parallel, d_model, n_kv, per_head: bool) -> dict:
    cfg = {"n_layers": int(n_layers), "n_heads": int(n_heads), "parallel_attn_mlp": bool(parallel),
           "d_model": int(d_model), "n_key_value_heads": int(n_kv)}
    if not per_head:
        cfg["per_head_writers"] = False
    return cfg


def eap_edge_names(cfg: dict) -> list[str]:
    """Every edge of EAP-IG's graph for ``cfg``, in the order its ``Graph.from_model`` adds them."""
    n_layers, n_heads, parallel = int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg["parallel_attn_mlp"])
    stream, names = ["input"], []
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        mlp = f"m{layer}"
        for parent in stream:
            names += [f"{parent}->{head}<{x}>" for head in heads for x in "qkv"]
            if parallel:
                names.append(f"{parent}->{mlp}")
        stream = stream + heads
        if not parallel:
            names += [f"{parent}->{mlp}" for parent in stream]
        stream.append(mlp)
    return names + [f"{parent}->logits" for parent in stream]


def _eap_writers(name: str, n_heads: int) -> list[str]:
    """EAP-IG writer names for one of ours: every head of the layer for a whole-layer attention write."""
    m = WRITER_NAME.match(name)
    if m is None:
        raise ValueError(f"not a writer name: {name!r} (expected embed, L3.head.H5, L3.attn or L3.mlp)")
    if m["embed"]:
        return ["input"]
    if m["attn"]:
        return [f"a{m['layer']}.h{h}" for h in range(n_heads)]
    return [f"a{m['layer']}.h{m['unit']}"] if m["head"] else [f"m{m['layer']}"]


def _eap_readers(name: str, n_heads: int, n_kv: int) -> list[str]:
    """EAP-IG reader names for one of ours: the query heads of a key-value group under GQA."""
    m = READER_NAME.match(name)
    if m is None:
        raise ValueError(f"not a reader name: {name!r} (expected L3.q.H5, L3.k.G1, L3.v.G1, L3.mlp or logits)")
    if m["logits"]:
        return ["logits"]
    layer = m["layer"]
    if m["mlp"]:
        return [f"m{layer}"]
    unit, x = int(m["unit"]), m["qkv"]
    if x == "q" or m["hg"] == "H" or n_kv == n_heads:  # a query head's own input (also k/v per query head)
        return [f"a{layer}.h{unit}<{x}>"]
    rep = n_heads // n_kv
    return [f"a{layer}.h{h}<{x}>" for h in range(unit * rep, (unit + 1) * rep)]


def _split(edge_name: str) -> tuple[str, str]:
    left, right = (s.strip() for s in edge_name.split("->"))
    return left.split("@")[0], right.split("@")[0]


def to_eap_graph(table: pd.DataFrame, cfg: dict, value: str = "effect", in_graph=None, negate: bool = True) -> dict:
    """The EAP-IG graph dict (what ``Graph.to_json`` writes) of a tidy edge table.

    ``table``: rows with ``writer`` and ``reader`` names (or an edge ``name``), per position or already
    summed (``pos`` −1); ``value``: the column written (``effect``, ``effect_exact``, ...); rows of the
    same writer and reader are summed over positions, NaN counting as 0, and the score written is
    −sum (MIB's importance, see the module's docstring; ``negate=False`` writes the sum as it is).
    ``in_graph``: which edges are in the circuit — None: every edge of the table with a finite value;
    a boolean column of the table; or a collection of EAP-IG edge names. ``cfg``: :func:`eap_config`
    (``n_key_value_heads`` defaults to ``n_heads``)."""
    n_heads = int(cfg["n_heads"])
    n_kv = int(cfg.get("n_key_value_heads", n_heads))
    if table.empty:
        writers = readers = pd.Series([], dtype=object)
    elif "writer" in table.columns:
        writers, readers = table["writer"].astype(str), table["reader"].astype(str)
    else:
        pairs = [_split(n) for n in table["name"]]
        writers, readers = pd.Series([p[0] for p in pairs]), pd.Series([p[1] for p in pairs])
    values = pd.to_numeric(table[value], errors="coerce").to_numpy(dtype=float) if len(table) else np.zeros(0)
    member = (np.isfinite(values) if in_graph is None or not isinstance(in_graph, str)
              else table[in_graph].fillna(False).to_numpy(dtype=bool))
    frame = pd.DataFrame({"writer": writers.to_numpy(), "reader": readers.to_numpy(),
                          "value": np.nan_to_num(values, nan=0.0) * (-1.0 if negate else 1.0), "member": member})
    frame = frame.groupby(["writer", "reader"], sort=False).agg(value=("value", "sum"), member=("member", "any"))

    all_names = eap_edge_names(cfg)
    scores = dict.fromkeys(all_names, 0.0)
    members = dict.fromkeys(all_names, False)
    parents_of, children_of = {}, {}  # each name parsed once, not once per edge
    for (writer, reader), row in frame.iterrows():
        if writer not in parents_of:
            parents_of[writer] = _eap_writers(writer, n_heads)
        if reader not in children_of:
            children_of[reader] = _eap_readers(reader, n_heads, n_kv)
        parents, children = parents_of[writer], children_of[reader]
        share = float(row["value"]) / (len(parents) * len(children))
        for name in (f"{p}->{c}" for p in parents for c in children):
            if name not in scores:
                raise ValueError(f"{writer} -> {reader} is not an edge of EAP-IG's graph for this model ({name})")
            scores[name] += share
            members[name] = members[name] or bool(row["member"])
    if in_graph is not None and not isinstance(in_graph, str):
        chosen = set(in_graph)
        unknown = chosen - set(all_names)
        if unknown:
            raise ValueError(f"unknown EAP-IG edge names: {sorted(unknown)[:5]}")
        members = {name: name in chosen for name in all_names}
    return {"cfg": _out_cfg(cfg, n_kv), "nodes": _nodes(cfg, members),
            "edges": {n: {"score": scores[n], "in_graph": members[n]} for n in all_names}}


def _out_cfg(cfg: dict, n_kv: int) -> dict:
    out = {k: cfg[k] for k in EAP_CFG_KEYS}
    if n_kv != int(cfg["n_heads"]):  # EAP-IG ignores these; from_eap_graph needs them to add the parts back
        out["n_key_value_heads"] = n_kv
    if cfg.get("per_head_writers", True) is False:
        out["per_head_writers"] = False
    return out


def _nodes(cfg: dict, members: dict) -> dict:
    touched = set()
    for name, is_in in members.items():
        if is_in:
            parent, child = name.split("->")
            touched.update((parent, child.split("<")[0]))
    names = ["input"] + [n for layer in range(int(cfg["n_layers"]))
                         for n in [f"a{layer}.h{h}" for h in range(int(cfg["n_heads"]))] + [f"m{layer}"]] + ["logits"]
    return {n: {"in_graph": n == "logits" or n in touched} for n in names}


def edge_values(scores, verified: pd.DataFrame | None = None, score: str = "effect"):
    """(W, R, T) per-position values of an :class:`~atpstar.edges.EdgeScores` for export: the signed
    ``effect`` estimate, or (``score="ranking"``) the method's ranking score (AtP*: GradDrop's) with
    the estimate's sign; the exact effect (``verified``' ``effect_exact``, by edge name) where verified."""
    import torch

    from .edgeset import EdgeSet

    if score not in SCORES:
        raise ValueError(f"score={score!r}: choose from {SCORES}")
    values = scores.effect.double().clone() if score == "effect" else scores.effect.double().sign() * scores.score.double()
    if verified is not None and len(verified):
        exact = torch.tensor(pd.to_numeric(verified["effect_exact"], errors="coerce").to_numpy(dtype=float))
        keep = exact.isfinite()
        edges = EdgeSet.from_names(scores.graph, verified["name"][keep.numpy()])
        values[edges.writer, edges.reader, edges.pos] = exact[keep].double()
    return values


def eap_graph_of(scores, d_model: int, circuit=None, verified: pd.DataFrame | None = None,
                 score: str = "effect") -> dict:
    """The EAP-IG graph of an :class:`~atpstar.edges.EdgeScores`, every edge summed over its positions.

    Each position contributes its :func:`edge_values` (exact effects where ``verified``, a table with
    ``name`` and ``effect_exact`` such as a run's ``verified_edges``, has them); the score written is
    −sum (MIB's importance). In the graph: ``circuit`` = an int N (the N edges of largest |sum|), a
    collection of edge names (``"L3.head.H5 -> L7.k.G1"``, ``@t`` ignored: that edge at any position
    puts it in), or None (all)."""
    g = scores.graph
    values = edge_values(scores, verified, score)
    present = values.isfinite().any(-1) & g.valid
    w, r = present.nonzero(as_tuple=True)
    summed = values.nan_to_num().sum(-1)[w, r].numpy()
    table = pd.DataFrame({"writer": np.asarray(g.writer_names, dtype=object)[w.numpy()],
                          "reader": np.asarray(g.reader_names, dtype=object)[r.numpy()], "value": summed})
    cfg = _config(g.n_layers, g.n_heads, g.parallel_residual, d_model, g.n_kv_heads, g.per_head)
    if circuit is None:
        member = np.ones(len(table), dtype=bool)
    elif isinstance(circuit, (int, np.integer)) and not isinstance(circuit, bool):
        member = np.zeros(len(table), dtype=bool)
        member[np.argsort(-np.abs(summed), kind="stable")[: int(circuit)]] = True
    else:
        wanted = {tuple(_split(name)) for name in circuit}
        member = np.array([(a, b) in wanted for a, b in zip(table["writer"], table["reader"])], dtype=bool)
    return to_eap_graph(table.assign(in_circuit=member), cfg, value="value", in_graph="in_circuit")


def write_eap_json(table: pd.DataFrame, cfg: dict, path, **options) -> Path:
    """Write :func:`to_eap_graph` to ``path`` (EAP-IG's ``Graph.from_json`` and MIB's evaluation read it)."""
    return write_json(to_eap_graph(table, cfg, **options), path)


def write_json(graph: dict, path) -> Path:
    """Write a graph dict as strict JSON (no NaN), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(graph, allow_nan=False), encoding="utf-8")
    return path


def from_eap_graph(graph, n_key_value_heads: int | None = None) -> pd.DataFrame:
    """Read an EAP-IG graph (a dict or a JSON path) back as a tidy edge table summed over positions:
    ``name, writer, reader, pos`` (−1), ``score`` (EAP-IG's, summed over the parts of our edge),
    ``effect`` (−score: atpstar's sign) and ``in_graph``; per-query-head ``<k>``/``<v>`` scores are added
    back into their key-value group, and per-head writers into the layer's ``L{l}.attn`` when ``cfg``
    says the heads' writes are not separate (``per_head_writers``: false)."""
    graph, where = _read_graph(graph)
    cfg = graph["cfg"]
    n_heads = int(cfg["n_heads"])
    n_kv = int(n_key_value_heads or cfg.get("n_key_value_heads", n_heads))
    rep = n_heads // n_kv
    per_head = cfg.get("per_head_writers", True) is not False
    out: dict[tuple[str, str], list] = {}
    for name, info in graph["edges"].items():
        if name.count("->") != 1 or not isinstance(info, dict) or "score" not in info:
            raise ValueError(f"{where}: edge {name!r} is not an EAP-IG edge entry (expected 'parent->child' with "
                             "{'score': float, 'in_graph': bool})")
        parent, child = name.split("->")
        child, _, qkv = child.partition("<")
        writer = _our_node(parent, where, per_head)
        reader = _our_node(child, where, True)
        if qkv:
            layer, head = reader.split(".")[0][1:], int(reader.rsplit("H", 1)[1])
            x = qkv.rstrip(">")
            reader = f"L{layer}.q.H{head}" if x == "q" else f"L{layer}.{x}.G{head // rep}"
        entry = out.setdefault((writer, reader), [0.0, False])
        entry[0] += float(info["score"])
        entry[1] = entry[1] or bool(info.get("in_graph", False))
    rows = [(f"{w} -> {r}", w, r, -1, s, -s, m) for (w, r), (s, m) in out.items()]
    return pd.DataFrame(rows, columns=["name", "writer", "reader", "pos", "score", "effect", "in_graph"])


def _read_graph(graph) -> tuple[dict, str]:
    """(the graph dict, where it came from), or a ValueError saying what is wrong with it."""
    where = "the graph dict"
    if isinstance(graph, (str, Path)):
        path, where = Path(graph), str(graph)
        if not path.is_file():
            raise FileNotFoundError(f"no such EAP-IG graph file: {path}")
        try:
            graph = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not a text file ({err.reason}): expected an EAP-IG graph JSON file, as "
                             "EAP-IG's Graph.to_json or `atpstar export` writes") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg}, line {err.lineno} column {err.colno}): expected "
                             "an EAP-IG graph JSON file, as EAP-IG's Graph.to_json or `atpstar export` writes") from None
    elif not isinstance(graph, dict):
        raise ValueError(f"an EAP-IG graph is a dict or the path of its JSON file, not {type(graph).__name__}")
    missing = [k for k in ("cfg", "nodes", "edges") if k not in graph] if isinstance(graph, dict) else None
    if missing is None or missing:
        got = sorted(graph)[:6] if isinstance(graph, dict) else type(graph).__name__
        raise ValueError(f"{where} is not an EAP-IG graph: it lacks {missing or ['cfg', 'nodes', 'edges']} (has {got}); "
                         "expected {'cfg': {...}, 'nodes': {...}, 'edges': {...}}, as EAP-IG's Graph.to_json writes")
    bad = [k for k in ("n_layers", "n_heads") if not isinstance(graph["cfg"], dict) or k not in graph["cfg"]]
    if bad or not isinstance(graph["edges"], dict):
        raise ValueError(f"{where}: its cfg lacks {bad} or its edges are not a dict of name -> entry; expected EAP-IG's "
                         "cfg (n_layers, n_heads, parallel_attn_mlp, d_model)")
    return graph, where


def _our_node(name: str, where: str, per_head: bool) -> str:
    m = _EAP_NODE.match(name)
    if m is None:
        raise ValueError(f"{where}: {name!r} is not an EAP-IG node name (expected input, a3.h5, m3 or logits)")
    if m["input"]:
        return "embed"
    if m["logits"]:
        return "logits"
    if m["mlp"] is not None:
        return f"L{m['mlp']}.mlp"
    return f"L{m['layer']}.head.H{m['head']}" if per_head else f"L{m['layer']}.attn"
