"""The diagnostic's design in a run: ``--diagnose`` and ``--stop theta`` take theirs from one planner.

Once the run knows how many units are left to bound (the fresh diagnostic: after verification; the stop
rule: before it, every ranked unit), :func:`choose` asks :func:`atpstar.diagnostics.design` for the
subsets, p and bound — the planner's choice at the default budget for what the user left out, the user's
``--samples`` / ``--p`` as given — says why, and keeps it for run.json. After the diagnostic,
:func:`measured` adds the residual energy the subsets measured and the θ the plan expects at it, and
:func:`warning` says when θ rules out nothing that was verified (nodes and edges alike).
"""

from __future__ import annotations

import math
import warnings

from ..diagnostics.defaults import design
from ..diagnostics.usefulness import largest_verified, theta_warning


def choose(ctx, unit: str, n_units: int, stop: bool):
    """The design (a :class:`~atpstar.diagnostics.planner.Plan`) for ``n_units`` unverified units of ``unit``
    kind; recorded on ``ctx.designs[unit]`` and said in the run's messages."""
    cfg = ctx.cfg
    plan = design(n_units, samples=cfg.samples, p=cfg.p, delta=cfg.delta, stop=stop, unit=unit)
    why = _why(cfg.samples, cfg.p, stop, plan.cost_per_pair)
    ctx.designs[unit] = {"n_units": n_units, "samples": plan.samples, "p": plan.p, "bound": plan.bound,
                         "delta": plan.delta, "stop_rule": stop, "cost_per_pair": plan.cost_per_pair,
                         "theta_per_residual": plan.theta_per_residual, "why": why, "explanation": plan.explanation}
    ctx.say(f"{unit} diagnostic design: {why}: {plan.explanation}")
    return plan


def count_units(ctx, ranking, v=None) -> int:
    """The units a diagnostic will bound: the ranked ones (``v``, a Verification: those it left unverified)
    at the positions that can move (:func:`first_moving`); at least 1."""
    if v is None:
        from ..units import bind

        units = bind(ctx.model, ctx.pairs, ranking).ranking(ranking).units
    else:
        units = v.ranking
    keep = units.pos >= first_moving(ctx.pairs)
    if v is not None:
        keep[:len(v.nodes)] = False  # a verification's units are the first of its ranking
    return max(1, int(keep.sum()))


def first_moving(pairs) -> int:
    """The first (right-aligned) position at which some pair's clean and noise prompts have differed: before
    it the two runs are identical, so every unit there has effect exactly 0 and the diagnostic leaves it out."""
    first = pairs.max_len
    for clean, noise in zip(pairs.clean, pairs.noise):
        differ = (clean != noise).nonzero().flatten()
        if len(differ):
            first = min(first, pairs.max_len - len(clean) + int(differ[0]))
    return first


def _why(samples, p, stop: bool, cost: float) -> str:
    rule = "for --stop theta's first check" if stop else "for --diagnose"
    if samples is None and p is None:
        return (f"chosen by the planner {rule} (the p giving the smallest expected θ at the default budget of "
                f"{cost:g} forward-pass equivalents per pair, the capped bound)")
    if p is None:
        return f"--samples {samples} as given, p chosen by the planner {rule} (the capped bound)"
    if samples is None:
        return f"--p {p:g} as given, the subsets chosen by the planner {rule} (the capped bound)"
    return f"--samples {samples} and --p {p:g} as given {rule} (the capped bound)"


def measured(ctx, unit: str, d, verified_frame) -> dict:
    """The recorded design of ``unit``'s diagnostic with what ``d`` (its Diagnosis) measured: the residual
    energy R = √Σ q² r² from the subsets' variance (Var y = p (1 − p) R²), the θ the plan expects at that R
    (``expected_theta``; far below the real θ: large unverified units or interactions), and the plan's
    words on whether θ can rule out units as large as the largest verified |effect|."""
    chosen = dict(ctx.designs.get(unit) or {})
    stats = getattr(d, "stats", None)
    if not chosen or stats is None or not math.isfinite(stats.variance):
        return chosen
    residual = math.sqrt(max(stats.variance, 0.0) / (d.p * (1 - d.p)))
    largest = largest_verified(verified_frame)
    plan = design(chosen["n_units"], samples=chosen["samples"], p=chosen["p"], delta=chosen["delta"],
                  stop=chosen["stop_rule"], unit=unit, residual=residual,
                  largest_verified=largest if largest and math.isfinite(largest) else None)
    chosen.update(residual=residual, expected_theta=plan.expected_theta, explanation=plan.explanation)
    ctx.designs[unit] = chosen
    return chosen


def warning(theta: float, verified_frame, unit: str, universe=None) -> str | None:
    """:func:`~atpstar.diagnostics.usefulness.theta_warning`, raised as a Python warning (the command line
    prints it, with --quiet too), for node and edge diagnostics alike."""
    note = theta_warning(theta, verified_frame, unit=unit, universe=universe)
    if note:
        warnings.warn(note, stacklevel=3)
    return note
