"""Score a circuit file (EAP-IG / MIB graph JSON) on a model and prompt pairs: its faithfulness, and with
``curve=True`` MIB's curves of the file's scores, CPR, CMD and the smallest circuits reaching 80 % / 90 %.
What ``atpstar evaluate`` prints and writes."""

from __future__ import annotations

from ..edges.graph import EdgeGraph
from ..metrics import resolve
from .evaluate import faithfulness
from .graph_json import read_graph_json
from .scoring import format_scorecard, scorecard

__all__ = ["evaluate_file", "format_evaluation"]


def evaluate_file(model, pairs, path, curve: bool = False, thresholds=(0.8, 0.9), batch_size: int | None = None) -> dict:
    """A JSON-ready dict: ``circuit`` (edges, m, m(full), m(∅), f, per-pair f) when the file has ``in_graph``
    edges; with ``curve``, the :func:`~.scoring.scorecard` of the file's scores: ``mib`` (both curves, CPR,
    CMD), ``m_full``, ``m_empty`` and ``smallest`` (one entry per threshold)."""
    graph = EdgeGraph.of(model)
    file = read_graph_json(path, model, graph)
    out = {"file": file.source, "model": model.name, "pairs": len(pairs), "metric": resolve(None, pairs).name,
           "edges_total": graph.n_edges()}
    has_circuit = bool(file.circuit.any())
    if not has_circuit and not curve:
        raise ValueError(f"{file.source} has no edge with in_graph true (an empty circuit): mark the circuit's edges "
                         "in_graph, or pass --curve to score the file's edge scores with MIB's curve instead")
    if has_circuit:
        result = faithfulness(model, pairs, file.circuit, graph=graph, batch_size=batch_size)
        out["circuit"] = {"edges": int(file.circuit.sum()), "m": float(result.m[0]), "m_full": float(result.clean.mean()),
                          "m_empty": float(result.noise.mean()), "f": float(result.f[0]),
                          "f_per_pair": [float(v) for v in result.per_pair()[0]]}
    if curve:
        if not bool(file.scores.nan_to_num().ne(0).any()):
            raise ValueError(f"{file.source}: every edge score is 0, so there is no ranking to draw MIB's curve from; "
                             "drop --curve to score the in_graph circuit alone")
        out.update(scorecard(model, pairs, file.scores, thresholds, graph=graph, batch_size=batch_size))
    return out


def format_evaluation(out: dict) -> str:
    """The dict of :func:`evaluate_file` as a few lines of text."""
    lines = [f"{out['file']} on {out['model']}, {out['pairs']} pairs, metric {out['metric']}"]
    if "circuit" in out:
        c = out["circuit"]
        lines.append(f"circuit: {c['edges']} of {out['edges_total']} edges; m = {c['m']:.4g} (full {c['m_full']:.4g}, "
                     f"empty {c['m_empty']:.4g}); faithfulness f = {c['f']:.4f}")
    if "mib" in out:
        lines += format_scorecard(out)
    return "\n".join(lines)
