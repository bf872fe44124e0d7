"""Edges for other tools: the EAP-IG / MIB graph JSON and TransformerLens hook names (SPEC.md §11).

**EAP-IG / MIB.** EAP-IG's ``Graph.to_json`` (and the MIB circuit-localization track, which reads
the same file) writes ``{"cfg": {...}, "nodes": {name: {"in_graph": bool}}, "edges": {name:
{"score": float, "in_graph": bool}}}`` with nodes ``input``, ``a{L}.h{H}``, ``m{L}``, ``logits``
and edges ``parent->child``, the reader of an attention head named by its input, ``a3.h0->a5.h1<q>``
(``<k>``, ``<v>``). Its edges are summed over positions. Here:

- writers ``embed`` → ``input``, ``L{l}.head.H{h}`` → ``a{l}.h{h}``, ``L{l}.mlp`` → ``m{l}``; readers
  ``L{l}.q.H{h}`` → ``a{l}.h{h}<q>``, ``L{l}.mlp`` → ``m{l}``, ``logits`` → ``logits``;
- under grouped-query attention our key and value readers are per key-value head (``L{l}.k.G{g}``),
  EAP-IG's per query head: the group's score is **split evenly** over the query heads that share it
  (so sums are kept and :func:`from_eap_graph` adds them back);
- a layer's whole attention write (``L{l}.attn``, where heads do not add up, e.g. Gemma 3) has no
  EAP-IG node: such a table is refused;
  (``cfg`` then also records ``n_key_value_heads``, a key EAP-IG's loader ignores);
- every edge of the full graph is written (as ``Graph.to_json`` does); those absent from the table get
  score 0 and ``in_graph`` false. A node is in the graph when an in-graph edge touches it; ``logits``
  always is.

**TransformerLens.** :func:`tl_hook` names where a node, writer or reader lives in a
``HookedTransformer``: ``L3.q.H5@12`` → ``blocks.3.attn.hook_q`` [:, 12, 5]; writers ``hook_embed``
(plus ``hook_pos_embed`` on models with learned positions), ``blocks.{l}.attn.hook_result``,
``blocks.{l}.hook_attn_out``, ``blocks.{l}.hook_mlp_out``; readers ``blocks.{l}.hook_q_input`` /
``hook_k_input`` / ``hook_v_input`` (head index: the query head, or the key-value head under GQA, as
TransformerLens indexes them), ``blocks.{l}.hook_mlp_in``, and for ``logits``
``blocks.{n_layers-1}.hook_resid_post`` (as EAP-IG). :func:`tl_edge_hooks` does both ends of an edge.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

__all__ = ["EAP_CFG_KEYS", "TLHook", "eap_config", "eap_edge_names", "eap_graph_of", "from_eap_graph", "mib_folder_name",
           "tl_edge_hooks", "tl_hook", "to_eap_graph", "write_eap_json", "write_json"]

EAP_CFG_KEYS = ("n_layers", "n_heads", "parallel_attn_mlp", "d_model")
"""The model facts EAP-IG's ``Graph.from_model`` reads from ``cfg``."""

_WRITER = re.compile(r"^(?:(?P<embed>embed)|L(?P<layer>\d+)\.(?:(?P<head>head)\.H(?P<unit>\d+)|(?P<attn>attn)|(?P<mlp>mlp)))$")
_READER = re.compile(r"^(?:(?P<logits>logits)|L(?P<layer>\d+)\.(?:(?P<qkv>[qkv])\.[HG](?P<unit>\d+)|(?P<mlp>mlp)))$")
_NODE = re.compile(r"^L(?P<layer>\d+)\.(?P<kind>q|k|v|head|neuron)\.[HGN](?P<unit>\d+)$")
_EAP_NODE = re.compile(r"^(?:(?P<input>input)|(?P<logits>logits)|a(?P<layer>\d+)\.h(?P<head>\d+)|m(?P<mlp>\d+))$")


# ---------------------------------------------------------------------------------------------- EAP-IG

def eap_config(model) -> dict:
    """EAP-IG's ``cfg`` for an atpstar ``Model`` (plus ``n_key_value_heads``, which EAP-IG ignores)."""
    return {"n_layers": int(model.n_layers), "n_heads": int(model.n_heads),
            "parallel_attn_mlp": bool(model.arch.parallel_residual), "d_model": int(model.d_model),
            "n_key_value_heads": int(model.n_kv_heads)}


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


def _eap_writer(name: str) -> str:
    m = _WRITER.match(name)
    if m is None:
        raise ValueError(f"not a writer name: {name!r} (expected embed, L3.head.H5, L3.attn or L3.mlp)")
    if m["embed"]:
        return "input"
    if m["attn"]:
        raise ValueError(f"{name}: a layer's whole attention write has no EAP-IG node (EAP-IG needs one write "
                         "per head; this model's heads do not add up, e.g. Gemma 3's post-attention norm)")
    return f"a{m['layer']}.h{m['unit']}" if m["head"] else f"m{m['layer']}"


def _eap_readers(name: str, n_heads: int, n_kv: int) -> list[str]:
    """EAP-IG reader names for one of ours: several for a key-value group under GQA."""
    m = _READER.match(name)
    if m is None:
        raise ValueError(f"not a reader name: {name!r} (expected L3.q.H5, L3.k.G1, L3.v.G1, L3.mlp or logits)")
    if m["logits"]:
        return ["logits"]
    layer = m["layer"]
    if m["mlp"]:
        return [f"m{layer}"]
    unit, x = int(m["unit"]), m["qkv"]
    if x == "q" or n_kv == n_heads:
        return [f"a{layer}.h{unit}<{x}>"]
    rep = n_heads // n_kv
    return [f"a{layer}.h{h}<{x}>" for h in range(unit * rep, (unit + 1) * rep)]


def _split(edge_name: str) -> tuple[str, str]:
    left, right = (s.strip() for s in edge_name.split("->"))
    return left.split("@")[0], right.split("@")[0]


def to_eap_graph(table: pd.DataFrame, cfg: dict, value: str = "effect", in_graph=None) -> dict:
    """The EAP-IG graph dict (what ``Graph.to_json`` writes) of a tidy edge table.

    ``table``: rows with ``writer`` and ``reader`` names (or an edge ``name``), per position or already
    summed (``pos`` −1); ``value``: the column written as the score (``effect``, the signed estimate,
    as EAP-IG's scores are; or ``effect_exact``, ``score``); rows of the same writer and reader are
    summed over positions, NaN counting as 0. ``in_graph``: which edges are in the circuit — None:
    every edge of the table with a finite value; a boolean column of the table; or a collection of
    EAP-IG edge names. ``cfg``: :func:`eap_config` (``n_key_value_heads`` defaults to ``n_heads``)."""
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
                          "value": np.nan_to_num(values, nan=0.0), "member": member})
    frame = frame.groupby(["writer", "reader"], sort=False).agg(value=("value", "sum"), member=("member", "any"))

    all_names = eap_edge_names(cfg)
    scores = dict.fromkeys(all_names, 0.0)
    members = dict.fromkeys(all_names, False)
    writer_cache: dict[str, str] = {}
    reader_cache: dict[str, list[str]] = {}
    for (writer, reader), row in frame.iterrows():
        parent = writer_cache.get(writer) or writer_cache.setdefault(writer, _eap_writer(writer))
        children = reader_cache.get(reader) or reader_cache.setdefault(reader, _eap_readers(reader, n_heads, n_kv))
        for child in children:
            name = f"{parent}->{child}"
            if name not in scores:
                raise ValueError(f"{writer} -> {reader} is not an edge of EAP-IG's graph for this model ({name})")
            scores[name] += float(row["value"]) / len(children)
            members[name] = members[name] or bool(row["member"])
    if in_graph is not None and not isinstance(in_graph, str):
        chosen = set(in_graph)
        unknown = chosen - set(all_names)
        if unknown:
            raise ValueError(f"unknown EAP-IG edge names: {sorted(unknown)[:5]}")
        members = {name: name in chosen for name in all_names}

    touched = set()
    for name, is_in in members.items():
        if is_in:
            parent, child = name.split("->")
            touched.update((parent, child.split("<")[0]))
    node_names = ["input"] + [n for layer in range(int(cfg["n_layers"]))
                              for n in [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]] + ["logits"]
    nodes = {n: {"in_graph": n == "logits" or n in touched} for n in node_names}
    edges = {n: {"score": scores[n], "in_graph": members[n]} for n in all_names}
    out_cfg = {k: cfg[k] for k in EAP_CFG_KEYS}
    if n_kv != n_heads:  # EAP-IG ignores it; from_eap_graph needs it to add the split groups back
        out_cfg["n_key_value_heads"] = n_kv
    return {"cfg": out_cfg, "nodes": nodes, "edges": edges}


def eap_graph_of(scores, d_model: int, circuit=None) -> dict:
    """The EAP-IG graph of an :class:`~atpstar.edges.EdgeScores`: every edge's signed effect summed over
    positions (``scores.group("positions")``, so no position is left out) as its score, and in the graph:
    ``circuit`` = an int N (the N edges of largest |summed effect|), a collection of edge names
    (``"L3.head.H5 -> L7.k.G1"``, ``@t`` ignored: that edge at any position puts it in), or None (all)."""
    table = scores.group("positions")
    g = scores.graph
    cfg = {"n_layers": g.n_layers, "n_heads": g.n_heads, "parallel_attn_mlp": bool(g.parallel_residual),
           "d_model": int(d_model), "n_key_value_heads": g.n_kv_heads}
    if circuit is None:
        member = np.ones(len(table), dtype=bool)
    elif isinstance(circuit, (int, np.integer)) and not isinstance(circuit, bool):
        member = np.zeros(len(table), dtype=bool)
        member[np.argsort(-table["effect"].abs().to_numpy(), kind="stable")[: int(circuit)]] = True
    else:
        wanted = {tuple(_split(name)) for name in circuit}
        member = np.array([(w, r) in wanted for w, r in zip(table["writer"], table["reader"])], dtype=bool)
    return to_eap_graph(table.assign(in_circuit=member), cfg, value="effect", in_graph="in_circuit")


def write_eap_json(table: pd.DataFrame, cfg: dict, path, **options) -> Path:
    """Write :func:`to_eap_graph` to ``path`` (EAP-IG's ``Graph.from_json`` and MIB's evaluation read it)."""
    return write_json(to_eap_graph(table, cfg, **options), path)


def write_json(graph: dict, path) -> Path:
    """Write a graph dict as strict JSON (no NaN), creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(graph, allow_nan=False), encoding="utf-8")
    return path


def mib_folder_name(task: str, model: str) -> str:
    """The MIB leaderboard's folder for one circuit: ``{task}_{model}`` (e.g. ``ioi_gpt2``)."""
    return f"{task}_{model}"


def from_eap_graph(graph, n_key_value_heads: int | None = None) -> pd.DataFrame:
    """Read an EAP-IG graph (a dict or a JSON path) back as a tidy edge table summed over positions:
    ``name, writer, reader, pos`` (−1), ``effect`` (the score) and ``in_graph``; per-head ``<k>``/``<v>``
    scores are added back into their key-value group."""
    if not isinstance(graph, dict):
        graph = json.loads(Path(graph).read_text(encoding="utf-8"))
    n_heads = int(graph["cfg"]["n_heads"])
    n_kv = int(n_key_value_heads or graph["cfg"].get("n_key_value_heads", n_heads))
    rep = n_heads // n_kv
    out: dict[tuple[str, str], list] = {}
    for name, info in graph["edges"].items():
        parent, child = name.split("->")
        child, _, qkv = child.partition("<")
        writer = _our_node(parent, writer=True)
        reader = _our_node(child, writer=False)
        if qkv:
            layer, head = _EAP_NODE.match(child)["layer"], int(_EAP_NODE.match(child)["head"])
            x = qkv.rstrip(">")
            reader = f"L{layer}.q.H{head}" if x == "q" else f"L{layer}.{x}.G{head // rep}"
        entry = out.setdefault((writer, reader), [0.0, False])
        entry[0] += float(info["score"])
        entry[1] = entry[1] or bool(info["in_graph"])
    rows = [(f"{w} -> {r}", w, r, -1, s, m) for (w, r), (s, m) in out.items()]
    return pd.DataFrame(rows, columns=["name", "writer", "reader", "pos", "effect", "in_graph"])


def _our_node(name: str, writer: bool) -> str:
    m = _EAP_NODE.match(name)
    if m is None:
        raise ValueError(f"not an EAP-IG node name: {name!r}")
    if m["input"]:
        return "embed"
    if m["logits"]:
        return "logits"
    if m["mlp"] is not None:
        return f"L{m['mlp']}.mlp"
    return f"L{m['layer']}.head.H{m['head']}"


# ------------------------------------------------------------------------------------- TransformerLens

class TLHook(NamedTuple):
    """Where a site lives in a TransformerLens ``HookedTransformer``: the hook's name, the head index
    (None for hooks without a head axis) and the position (None when the name has none)."""

    hook: str
    head: int | None = None
    pos: int | None = None

    @property
    def index(self) -> tuple:
        """Index into the hook's activation (batch, pos[, head, ...])."""
        pos = slice(None) if self.pos is None else self.pos
        return (slice(None), pos) if self.head is None else (slice(None), pos, self.head)


_NODE_HOOK = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "head": "attn.hook_z",
              "neuron": "mlp.hook_post"}


def tl_hook(name: str, n_layers: int | None = None, role: str | None = None) -> TLHook:
    """The TransformerLens hook of a node (``L3.q.H5@12``), writer (``L3.head.H5@12``, ``embed``) or
    reader (``L7.k.G1@12``, ``L3.mlp``, ``logits``) name; ``@t`` is optional.

    Some names are both: ``L3.head.H5`` is a node (``attn.hook_z``) and a writer (``attn.hook_result``),
    ``L3.k.G1`` a node (``attn.hook_k``) and a reader (``hook_k_input``), ``L3.mlp`` a writer
    (``hook_mlp_out``) and a reader (``hook_mlp_in``). ``role=None`` reads node names as nodes;
    ``role="writer"`` / ``"reader"`` reads the name as that end of an edge. ``logits`` needs
    ``n_layers``. For neurons the ``head`` field holds the neuron index."""
    if role not in (None, "writer", "reader"):
        raise ValueError(f"role must be None, 'writer' or 'reader', not {role!r}")
    base, _, at = name.strip().partition("@")
    pos = int(at) if at else None
    m = _NODE.match(base)
    if m and role is None:
        return TLHook(f"blocks.{m['layer']}.{_NODE_HOOK[m['kind']]}", int(m["unit"]), pos)
    w = _WRITER.match(base) if role != "reader" else None
    r = _READER.match(base) if role != "writer" else None
    if w and r:
        raise ValueError(f"{name!r} is both a writer and a reader: give role='writer' or role='reader'")
    if w:
        if w["embed"]:
            return TLHook("hook_embed", None, pos)
        layer = w["layer"]
        if w["head"]:
            return TLHook(f"blocks.{layer}.attn.hook_result", int(w["unit"]), pos)
        return TLHook(f"blocks.{layer}.hook_attn_out" if w["attn"] else f"blocks.{layer}.hook_mlp_out", None, pos)
    if r:
        if r["logits"]:
            if n_layers is None:
                raise ValueError("the logits reader's hook is blocks.{n_layers-1}.hook_resid_post: give n_layers")
            return TLHook(f"blocks.{int(n_layers) - 1}.hook_resid_post", None, pos)
        layer = r["layer"]
        if r["mlp"]:
            return TLHook(f"blocks.{layer}.hook_mlp_in", None, pos)
        return TLHook(f"blocks.{layer}.hook_{r['qkv']}_input", int(r["unit"]), pos)
    what = {None: "node, writer or reader", "writer": "writer", "reader": "reader"}[role]
    raise ValueError(f"not a {what} name: {name!r}")


def tl_edge_hooks(edge: str, n_layers: int | None = None) -> tuple[TLHook, TLHook]:
    """(writer hook, reader hook) of an edge name ``"L3.head.H5@12 -> L7.k.G1@12"``."""
    if "->" not in edge:
        raise ValueError(f"not an edge name: {edge!r} (expected 'writer@t -> reader@t')")
    left, right = (s.strip() for s in edge.split("->"))
    return tl_hook(left, n_layers, role="writer"), tl_hook(right, n_layers, role="reader")
