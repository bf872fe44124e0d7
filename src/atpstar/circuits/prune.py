"""Top-n circuits and the MIB benchmark's pruning (EAP-IG's ``Graph.apply_topn`` and ``Graph.prune``).

Top n: the n edges of largest score (signed, or absolute with ``absolute=True``) among the edges that
exist. Pruning keeps only edges on a path from the input to the logits, as a fixpoint: a writer (a
node: ``embed``, a head or a layer's attention, an MLP) stays when it has an outgoing edge in the
circuit and an incoming one (``embed`` always counts as fed); an edge stays when its writer stays
and its reader belongs to a node that stays (``logits`` always does). A reader belongs to the node
it feeds: ``L{ℓ}.q.H{h}`` to head h, ``L{ℓ}.k.G{g}`` / ``L{ℓ}.v.G{g}`` to every query head of key-value
group g (EAP-IG, on TransformerLens's ungrouped attention, gives each query head its own key and
value input instead), ``L{ℓ}.mlp`` to that MLP; with whole-layer attention writers (``L{ℓ}.attn``)
every q/k/v reader of the layer feeds it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..edges.graph import ATTN, EMBED, HEAD, LOGITS, MLP, MLP_IN, EdgeGraph

__all__ = ["feeds", "prune", "top_n"]


def feeds(graph: EdgeGraph) -> Tensor:
    """(W, R) bool: reader r is an input of writer (node) w."""
    wl, wk, wu = graph.writer_layer[:, None], graph.writer_kind[:, None], graph.writer_unit[:, None]
    rl, rk, ru = graph.reader_layer[None], graph.reader_kind[None], graph.reader_unit[None]
    same = wl == rl
    group = graph.n_heads // graph.n_kv_heads
    head = (wk == HEAD) & (((rk == 0) & (ru == wu)) | ((rk > 0) & (rk < MLP_IN) & (ru == wu // group)))
    attn = (wk == ATTN) & (rk < MLP_IN)
    mlp = (wk == MLP) & (rk == MLP_IN)
    return same & (head | attn | mlp) & (wk != EMBED)


def prune(graph: EdgeGraph, circuit: Tensor) -> Tensor:
    """(W, R) the circuit without the edges that lie on no path from the input to the logits."""
    if circuit.ndim != 2:
        raise ValueError(f"pruning needs a position-free (W, R) circuit, got shape {tuple(circuit.shape)}")
    fed_by = feeds(graph).float()
    logits = graph.reader_kind == LOGITS
    embed = graph.writer_kind == EMBED
    edges = circuit & graph.valid
    while True:
        has_in = (fed_by @ edges.any(0).float()) > 0
        nodes = edges.any(1) & (has_in | embed)
        reader_alive = ((nodes.float() @ fed_by) > 0) | logits
        kept = edges & nodes[:, None] & reader_alive[None, :]
        if torch.equal(kept, edges):
            return kept
        edges = kept


def top_n(graph: EdgeGraph, scores: Tensor, n: int, absolute: bool, pruned: bool = True) -> Tensor:
    """(W, R) the n existing edges of largest ``scores`` (``|scores|`` when ``absolute``), pruned."""
    values = scores.abs() if absolute else scores.clone()
    values = values.double().masked_fill(~graph.valid, -torch.inf).nan_to_num(nan=-torch.inf)
    order = torch.sort(values.flatten(), descending=True, stable=True).indices[:n]
    mask = torch.zeros(graph.shape, dtype=torch.bool)
    mask.view(-1)[order] = True
    mask &= graph.valid
    return prune(graph, mask) if pruned else mask
