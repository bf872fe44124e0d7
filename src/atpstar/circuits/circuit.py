"""Circuits as boolean masks over the edge graph, from masks, edge names, edge sets or writers.

A position-free circuit is a (W, R) mask (the edge is in the circuit at every position), a
per-position circuit a (W, R, T) mask over aligned positions. :func:`as_circuits` turns what a user
passes into one stacked (C, W, R) or (C, W, R, T) mask and refuses what cannot be a circuit of this
model, naming the culprit.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..edges.edgeset import EdgeSet
from ..edges.graph import EdgeGraph

__all__ = ["as_circuits", "circuit_edges", "empty_circuit", "full_circuit", "node_circuit"]


def empty_circuit(graph: EdgeGraph) -> Tensor:
    """(W, R) the circuit without any edge: every reader reads the noise run's writes."""
    return torch.zeros(graph.shape, dtype=torch.bool)


def full_circuit(graph: EdgeGraph) -> Tensor:
    """(W, R) every edge of the graph: the clean run."""
    return graph.valid.clone()


def node_circuit(graph: EdgeGraph, writers) -> Tensor:
    """(W, R) the circuit of a set of writers (nodes: ``embed``, ``L3.head.H5`` or ``L3.attn``, ``L3.mlp``):
    every edge out of them, so each writer outside takes its noise value for every reader."""
    names = list(writers) if not isinstance(writers, str) else [writers]
    mask = torch.zeros(graph.shape, dtype=torch.bool)
    if names:
        mask[graph.writer_index(names)] = True
    return mask & graph.valid


def circuit_edges(graph: EdgeGraph, names) -> Tensor:
    """The mask of edge names: all position-free (``"L0.head.H1 -> L2.q.H0"``: (W, R)) or all per
    position (``"L0.head.H1@3 -> L2.q.H0@3"``: (W, R, T), T = 1 + the largest position named)."""
    names = [str(n) for n in names]
    if not names:
        raise ValueError("empty list of edge names: name at least one edge, or pass empty_circuit(graph) "
                         "for the circuit without edges")
    with_pos = ["@" in n for n in names]
    if any(with_pos) and not all(with_pos):
        i = with_pos.index(False) if with_pos[0] else with_pos.index(True)
        raise ValueError(f"edge {names[i]!r} mixes position-free and per-position names in one circuit: write every "
                         "edge as 'writer -> reader' (position-free) or every edge as 'writer@t -> reader@t'")
    if all(with_pos):
        edges = EdgeSet.from_names(graph, names)
        mask = torch.zeros((*graph.shape, int(edges.pos.max()) + 1), dtype=torch.bool)
        mask[edges.writer, edges.reader, edges.pos] = True
        return mask
    parts = [n.split("->") for n in names]
    bad = [n for n, p in zip(names, parts) if len(p) != 2]
    if bad:
        raise ValueError(f"cannot parse edge name {bad[0]!r}: expected 'writer -> reader', e.g. 'L0.head.H1 -> L2.q.H0'")
    writer = graph.writer_index([p[0].strip() for p in parts])
    reader = graph.reader_index([p[1].strip() for p in parts])
    graph.require(writer, reader, names)
    mask = torch.zeros(graph.shape, dtype=torch.bool)
    mask[writer, reader] = True
    return mask


def as_circuits(graph: EdgeGraph, circuits, n_pos: int) -> Tensor:
    """(C, W, R) or (C, W, R, n_pos) bool masks of one circuit or a list of circuits (masks, edge names,
    EdgeSets); position-free circuits are spread over the positions when mixed with per-position ones."""
    if isinstance(circuits, (Tensor, EdgeSet)) or _is_names(circuits):
        items = [circuits]
        if isinstance(circuits, Tensor) and circuits.ndim >= 3 and tuple(circuits.shape[1:3]) == graph.shape:
            items = list(circuits)  # a stack of circuits
    else:
        items = list(circuits)
        if not items:
            raise ValueError("no circuits given: pass a circuit (mask or edge names) or a list of them")
    masks = [_one(graph, c, n_pos, i) for i, c in enumerate(items)]
    if any(m.ndim == 3 for m in masks):
        masks = [m if m.ndim == 3 else m[..., None].expand(-1, -1, n_pos) for m in masks]
    return torch.stack(masks)


def _is_names(value) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], str))


def _one(graph: EdgeGraph, circuit, n_pos: int, i: int) -> Tensor:
    if isinstance(circuit, str):
        raise TypeError(f"circuit {i} is the single edge name {circuit!r}: wrap it in a list")
    if isinstance(circuit, EdgeSet):
        circuit.check(graph)
        mask = torch.zeros((*graph.shape, n_pos), dtype=torch.bool)
        circuit.check_positions(graph, n_pos)
        mask[circuit.writer, circuit.reader, circuit.pos] = True
        return mask
    if not isinstance(circuit, Tensor):
        circuit = circuit_edges(graph, circuit)
    return _checked_mask(graph, circuit, n_pos, i)


def _checked_mask(graph: EdgeGraph, mask: Tensor, n_pos: int, i: int) -> Tensor:
    if mask.dtype != torch.bool:
        raise TypeError(f"circuit {i}: a mask must be a bool tensor, got {mask.dtype}")
    if tuple(mask.shape[:2]) != graph.shape or mask.ndim not in (2, 3):
        raise ValueError(f"circuit {i}: mask of shape {tuple(mask.shape)} does not fit this model's edge graph "
                         f"(W, R) = {graph.shape} or (W, R, T); was it made for another model or graph granularity?")
    if mask.ndim == 3:
        if mask.shape[2] > n_pos and mask[..., n_pos:].any():
            raise IndexError(f"circuit {i} names positions up to {mask.shape[2] - 1}, but the prompts have {n_pos}")
        mask = torch.nn.functional.pad(mask[..., :n_pos], (0, n_pos - min(mask.shape[2], n_pos)))
    invalid = mask & ~(graph.valid if mask.ndim == 2 else graph.valid[..., None])
    if invalid.any():
        w, r = invalid.nonzero()[0, :2].tolist()
        raise ValueError(f"circuit {i} holds {int(invalid.sum())} edges the model does not have, e.g. "
                         f"{graph.writer_names[w]} -> {graph.reader_names[r]}: {graph.why_invalid(w, r)}")
    return mask
