"""A ranking's MIB scorecard in one JSON-ready dict: both faithfulness curves, CPR, CMD, the clean and
noise references, and the smallest top-n circuits reaching each threshold (0.8, 0.9). What
``atpstar evaluate --curve`` prints and ``atpstar run --faithfulness`` writes into the run folder."""

from __future__ import annotations

from ..edges.graph import EdgeGraph
from .curve import mib
from .smallest import smallest

__all__ = ["format_scorecard", "scorecard"]


def scorecard(model, pairs, scores, thresholds=(0.8, 0.9), graph: EdgeGraph | None = None,
              batch_size: int | None = None) -> dict:
    """``{"mib": MIBScores.to_dict(), "m_full", "m_empty", "smallest": [Smallest.to_dict() per threshold]}``
    of ``scores`` (an EdgeScores, or (W, R) MIB-convention scores); the smallest circuits are searched on
    the absolute ranking (the CMD curve's), from its grid."""
    board = mib(model, pairs, scores, graph=graph, batch_size=batch_size)
    found = smallest(model, pairs, scores, thresholds, absolute=True, graph=graph, grid_curve=board.absolute)
    result = board.signed.result
    return {"mib": board.to_dict(), "m_full": float(result.clean.mean()), "m_empty": float(result.noise.mean()),
            "smallest": [s.to_dict() for s in found]}


def format_scorecard(card: dict) -> list[str]:
    """The scorecard as lines of text: CPR and CMD, the curves' table, the smallest circuits."""
    m = card["mib"]
    lines = [f"MIB: CPR {m['cpr']:.4f} (signed scores, higher is better), CMD {m['cmd']:.4f} "
             "(absolute scores, lower is better)",
             "  % of edges   edges (signed / absolute, after pruning)   f signed   f absolute"]
    s, a = m["signed"], m["absolute"]
    for p, ks, ka, fs, fa in zip(s["grid"], s["kept"], a["kept"], s["f"], a["f"]):
        lines.append(f"  {100 * p:>9.1f}   {ks:>10} / {ka:<10}                       {fs:>8.3f}   {fa:>10.3f}")
    for found in card.get("smallest", []):
        what = (f"top {found['n']} edges ({found['kept']} after pruning), f = {found['f']:.3f}" if found["n"] is not None
                else "no circuit of the curve reaches it")
        lines.append(f"smallest circuit with f >= {found['threshold']}: {what}")
    return lines
