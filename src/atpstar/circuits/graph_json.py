"""A circuit found elsewhere: EAP-IG's / the MIB benchmark's graph JSON as a circuit and a ranking of this model.

The file (``Graph.to_json``) holds ``cfg`` (``n_layers``, ``n_heads``, ``parallel_attn_mlp``), ``nodes`` and
``edges`` (``"a0.h1->a2.h0<q>": {"score": s, "in_graph": b}``), summed over positions. Here:

- ``in_graph`` edges are the circuit, a position-free (W, R) mask;
- ``score`` values are the ranking, as they are (MIB's convention: larger = more important for the
  behaviour's loss, so the signed top-n are the edges whose removal hurts most);
- under grouped-query attention, EAP-IG's per-query-head key and value inputs fold into atpstar's
  per-key-value-head readers: a group's edge is in the circuit when any of its query heads' edges is,
  its score is their sum (the grouped granularity; see docs/circuits.md);
- on a model whose heads do not add up (Gemma 3: one ``L{ℓ}.attn`` writer per layer) a head's edges fold
  into its layer's attention writer the same way, with a warning.

A file of another model (layer or head count, parallel or sequential blocks), an edge this model does
not have, or a file without any ``in_graph`` edge (when a circuit is asked for) is refused, naming it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..edges.export import from_eap_graph
from ..edges.graph import EdgeGraph

__all__ = ["GraphFile", "read_graph_json"]


@dataclass
class GraphFile:
    """One EAP-IG / MIB graph JSON read against a model's edge graph."""

    circuit: Tensor
    """(W, R) bool: the ``in_graph`` edges."""
    scores: Tensor
    """(W, R) float64: the ``score`` values (NaN where the edge does not exist)."""
    source: str


def read_graph_json(path, model, graph: EdgeGraph | None = None) -> GraphFile:
    """Read the file (or an already-parsed dict) against ``model``; see the module doc."""
    source = "graph" if isinstance(path, dict) else str(path)
    data = path if isinstance(path, dict) else _load(path)
    graph = EdgeGraph.resolve(model, graph)
    _check_model(data, model, source)
    table = from_eap_graph(data, n_key_value_heads=model.n_kv_heads)
    writers = table["writer"].astype(str)
    if not graph.per_head:
        if writers.str.contains(r"\.head\.").any():
            warnings.warn(f"{model.name}: attention heads do not add up, so {source}'s per-head edges are folded into "
                          "each layer's attention writer L{layer}.attn (an edge is in when any head's edge is)")
        writers = writers.str.replace(r"\.head\.H\d+$", ".attn", regex=True)
    w, r = graph.writer_index(writers.tolist()), graph.reader_index(table["reader"].astype(str).tolist())
    graph.require(w, r, table["name"].tolist(), where=f"{source}, a graph of {model.name}: ")
    circuit = torch.zeros(graph.shape, dtype=torch.bool)
    scores = torch.zeros(graph.shape, dtype=torch.float64)
    inside = torch.tensor(table["in_graph"].to_numpy(dtype=bool))
    circuit[w[inside], r[inside]] = True
    scores.index_put_((w, r), torch.tensor(table["score"].to_numpy(dtype="float64")), accumulate=True)
    return GraphFile(circuit, scores.masked_fill(~graph.valid, torch.nan), source)


def _load(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no circuit file {str(path)!r}: pass an EAP-IG / MIB graph JSON (Graph.to_json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err}): pass an EAP-IG / MIB graph JSON (Graph.to_json)") from None
    missing = [k for k in ("cfg", "edges") if not isinstance(data, dict) or k not in data]
    if missing:
        raise ValueError(f"{path} is not an EAP-IG / MIB graph JSON: no {' and no '.join(missing)!s} entry "
                         "(expected {'cfg': {...}, 'nodes': {...}, 'edges': {'input->a0.h0<q>': {'score', 'in_graph'}}})")
    return data


def _check_model(data: dict, model, source: str) -> None:
    cfg = data["cfg"]
    theirs = {"layers": cfg.get("n_layers"), "heads": cfg.get("n_heads")}
    ours = {"layers": model.n_layers, "heads": model.n_heads}
    if None in theirs.values():
        raise ValueError(f"{source}: its cfg lacks n_layers or n_heads (EAP-IG's Graph.to_json writes both)")
    wrong = [k for k in ours if int(theirs[k]) != ours[k]]
    if wrong:
        raise ValueError(f"{source} is a graph of a model with {theirs['layers']} layers and {theirs['heads']} heads, "
                         f"but {model.name} has {ours['layers']} layers and {ours['heads']} heads: pass the model the "
                         "circuit was found on (--model), or a circuit of this model")
    parallel = cfg.get("parallel_attn_mlp")
    if parallel is not None and bool(parallel) != bool(model.arch.parallel_residual):
        raise ValueError(f"{source} is a graph of a model with {'parallel' if parallel else 'sequential'} attention and "
                         f"MLP blocks, {model.name}'s are not: pass the model the circuit was found on")

