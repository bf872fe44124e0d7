"""One design for every diagnostic the command line runs: ``--diagnose`` and ``--stop theta`` alike.

Both patch random subsets of the unverified units and bound them with the same capped bound; they differ
only in when the bound is read (once after verification, or at every check of the stop rule, which spends
δ over its checks). :func:`design` turns what the user gave (``--samples``, ``--p``, or neither) and the
number of units into a :class:`~.planner.Plan`: what is missing is chosen by :func:`~.planner.plan` for
the default budget, so the two options share one bound, one set of defaults and one explanation of p.
"""

from __future__ import annotations

import math

from ..edges.patching import EdgePatcher
from .planner import CAPTURE, SUBSET_COST, Plan, plan

__all__ = ["BOUND", "BUDGET", "design"]

BUDGET = CAPTURE + 300 * SUBSET_COST
"""Default forward-pass equivalents per pair for the diagnostic: the clean and noise runs and 300 subsets
(the stop rule's measured default; at ~10⁴ unverified nodes the planner picks p = 0.1 for it)."""
BOUND = "capped"
"""The bound both options report: never wider than the sub-Gaussian one, and finite for units in no subset."""
EDGE_CAPTURE = EdgePatcher.capture_forward
"""Forward-pass equivalents per pair before any edge subset (the edge patcher's capture passes)."""


def design(n_units: int, samples: int | None = None, p: float | None = None, delta: float = 0.05,
           stop: bool = False, budget: float | None = None, unit: str = "node", residual: float | None = None,
           largest_verified: float | None = None) -> Plan:
    """The diagnostic's design over ``n_units`` unverified units (nodes, or edges with ``unit="edge"``).

    ``samples`` and ``p``: what the user asked for (None: the planner's choice). Neither: the design that
    minimises the expected θ at ``budget`` (default :data:`BUDGET`); ``samples`` only: the best p for that
    many subsets; ``p`` only: as many subsets as the budget pays for; both: that design, with the θ it
    buys. ``p`` only, when the budget's subsets are too few for a finite bound at that p: the fewest
    (doubling) that give one. ``stop``: plan for the stop rule's first check (it spends part of δ on later checks) rather than
    one diagnostic at δ. ``residual``, ``largest_verified``: as for :func:`~.planner.plan` (the θ to expect
    at that residual energy, and whether it can rule out units as large as the verified ones). Raises
    ValueError naming the option to change when no finite bound is possible."""
    if unit not in ("node", "edge"):
        raise ValueError(f"unit must be 'node' or 'edge', got {unit!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 2):
        raise ValueError(f"--samples must be an integer of at least 2 (random subsets), got {samples!r}")
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1):
        raise ValueError(f"--p must be in (0, 1) (each unit's chance to be in a subset), got {p!r}")
    capture = EDGE_CAPTURE if unit == "edge" else CAPTURE
    if samples is not None:
        budget = capture + samples * SUBSET_COST
    elif budget is None:
        budget = BUDGET - CAPTURE + capture
    options = dict(delta=delta, bound=BOUND, capture=capture, check=1 if stop else None, residual=residual,
                   largest_verified=largest_verified)
    if p is not None:
        options.update(grid=(float(p),), max_subset=math.inf)
    try:
        if p is not None and samples is None:
            return _enough(n_units, budget, options)
        return plan(n_units, budget, **options)
    except ValueError as err:
        given = " and ".join(f"--{name} {value}" for name, value in (("samples", samples), ("p", p)) if value)
        if not given:
            raise
        raise ValueError(f"{given} cannot bound {n_units} unverified {unit}s: raise --samples, or bring --p "
                         f"towards 0.5 ({err})") from err


def _enough(n_units: int, budget: float, options: dict) -> Plan:
    """The plan at a fixed p with the budget doubled until the bound is finite (at most 2¹⁰ times)."""
    for _ in range(10):
        try:
            return plan(n_units, budget, **options)
        except ValueError:
            budget = options["capture"] + 2 * (budget - options["capture"])
    return plan(n_units, budget, **options)
