"""The run's faithfulness stage (``--faithfulness``, at ``--level edges`` or ``both``): the first method's edge
ranking scored as circuits with MIB's semantics, by :func:`atpstar.circuits.scorecard` — the faithfulness
curves at MIB's grid, CPR, CMD, and the smallest top-n circuits reaching f ≥ 0.8 and 0.9.

The ranking is the run's own: the first method's edge estimates, with the exact effect in place of the
estimate at every edge the run verified, in MIB's sign convention (an edge's score is minus its effect on the
metric, summed over positions). The stage writes ``stages/faithfulness.json`` (the scorecard) and
``faithfulness.csv`` (the curves, one row per grid point); like every stage it is skipped when its file is
there, so a resumed run does not redo it."""

from __future__ import annotations

import json
import time
import warnings

import pandas as pd

from .folder import FAITHFULNESS_CSV, FAITHFULNESS_JSON, atomic_write
from .stages import Context

THRESHOLDS = (0.8, 0.9)
"""The faithfulness levels whose smallest circuits are searched."""


def faithfulness(ctx: Context) -> None:
    """Score the edge ranking's circuits (resumable: skipped once ``stages/faithfulness.json`` exists)."""
    if not ctx.plan.faithfulness or ctx.folder.done(FAITHFULNESS_JSON):
        return
    from ..circuits import FaithfulnessUndefined, format_scorecard, mib_scores, scorecard

    method, verified = ctx.cfg.methods[0], ctx.verified_edges
    n_verified = 0 if verified is None or not len(verified) else int(verified["effect_exact"].notna().sum())
    ranking = mib_scores(ctx.edge_scores, ctx.pairs, verified=verified if n_verified else None)
    about = {"method": method, "verified": n_verified, "ranking": ranking_words(method, n_verified),
             "thresholds": list(THRESHOLDS)}
    ctx.say(f"faithfulness: scoring the circuits of {about['ranking']}...")
    start = time.perf_counter()
    try:
        card = scorecard(ctx.model, ctx.pairs, ranking, THRESHOLDS, graph=ctx.edge_scores.graph,
                         batch_size=ctx.cfg.batch_size)
    except FaithfulnessUndefined as err:  # a fact about the task's pairs, not a failed run
        warnings.warn(f"--faithfulness: {err}", stacklevel=2)
        _write(ctx, {**about, "undefined": str(err)})
        ctx.record("faithfulness", method=method, undefined=str(err))
        return
    seconds = time.perf_counter() - start
    circuits = 2 * len(card["mib"]["signed"]["grid"]) + sum(s["evaluations"] for s in card["smallest"])
    card = {**about, **card, "circuits": circuits, "seconds": seconds}
    save_curve_table(card, ctx.folder / FAITHFULNESS_CSV)
    _write(ctx, card)
    ctx.record("faithfulness", method=method, verified=n_verified, cpr=card["mib"]["cpr"], cmd=card["mib"]["cmd"],
               circuits=circuits, seconds=seconds)
    lines = format_scorecard(card)
    for line in lines[:1] + lines[-len(THRESHOLDS):]:  # CPR and CMD, the smallest circuits
        ctx.say(line)


def ranking_words(method: str, verified: int) -> str:
    """Which ranking the curves are of, in words (the report's caption says it too)."""
    exact = (f"with the exact effects of its {verified:,} verified edges in place of their estimates" if verified
             else "its estimates (no edge was verified)")
    return (f"the {method} edge ranking, {exact}, in MIB's sign convention (score = minus the effect on the metric, "
            "summed over positions)")


def curve_table(card: dict) -> pd.DataFrame:
    """One row per grid point: the share and number of edges asked for, and per ranking (signed: CPR's,
    absolute: CMD's) the edges kept after pruning and the faithfulness f."""
    signed, absolute = card["mib"]["signed"], card["mib"]["absolute"]
    return pd.DataFrame({"percent_edges": [100 * p for p in signed["grid"]], "edges": signed["requested"],
                         "edges_signed": signed["kept"], "f_signed": signed["f"],
                         "edges_absolute": absolute["kept"], "f_absolute": absolute["f"]})


def save_curve_table(card: dict, path) -> None:
    frame = curve_table(card)
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def _write(ctx: Context, summary: dict) -> None:
    atomic_write(ctx.folder.stage(FAITHFULNESS_JSON), lambda tmp: tmp.write_text(json.dumps(summary, indent=1)))
