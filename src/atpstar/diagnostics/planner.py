"""Planning a diagnostic before running it: from the number of unverified units and a budget, the design
(p, subsets J) and the θ to expect (docs/diagnostic.md, "Planning a diagnostic").

Pure arithmetic on the bound of :mod:`.bound`, no model. Under additivity a node's statistic has standard
error ``se ≈ R / √J`` whatever p (``n₁ ≈ Jp``, ``Var y = p(1 − p) R²``, R = √Σ q² r² the residual energy
left after subtracting the estimates), and the bound adds ``f(δ, N, J, p) · se`` to each |ĉ(n)|; the capped
bound also caps every node at ``|ê(n)| + R / √(1 − g)``. So the θ to expect is

    θ ≈ max(m, z_N · se) + f · se        (sub-Gaussian; m the largest unverified |effect|, z_N the
                                          largest of N standard normal noises)
    θ ≈ min(that, m + R / √(1 − g))      (capped)

and a design is chosen by minimising it over a grid of p, with J the subsets the budget pays for. The bound
alone always prefers p towards 1/2 (smaller f); real subsets stop adding up when they hold too many units,
so p is capped by ``max_subset`` units per subset (see :data:`MAX_SUBSET`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.stats import binom, norm

from .bound import check_probability, multiplier, spent_delta, variance_slack

P_GRID = (0.5, 0.3, 0.2, 0.1, 0.05, 0.03, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001)
"""The probabilities a plan chooses from."""
CAPTURE = 2.0
"""Forward-pass equivalents per pair before any subset: the clean and the noise run (nodes; edges take 4)."""
SUBSET_COST = 1.0
"""Forward-pass equivalents per subset and pair: at most one full pass (layers and positions below a subset's
lowest unit are not recomputed). Measured on SmolLM2 (benchmarks/results/diagnostic_theta.csv,
diagnostic_smollm.csv): 0.94 (IOI), 0.86 (CITY), 1.0 (RAND) at p = 0.2, 0.1 and 0.05, and 0.93 at
p = 0.02: a plan at 1.0 never overspends."""
MAX_SUBSET = 1200
"""Default largest expected subset size p·N. Measured on SmolLM2's attention nodes (docs/diagnostic.md §9.1):
p = 0.1 (710–1,140 nodes per subset) gave the tightest real θ on IOI, CITY and RAND; interactions inflated
RAND's θ over the additive prediction 4.7× at ~400 nodes per subset, 6.0× at ~800 and 8.8× at ~1,600."""
UNOBSERVED = 0.01
"""Largest accepted expected number of units in no subset or in all, for the sub-Gaussian bound (each one makes
its θ infinite; the capped bound caps them by the residual energy)."""


@dataclass(frozen=True)
class Plan:
    """A diagnostic's design and the θ to expect from it (:func:`plan`)."""

    p: float
    """Probability that a unit is in a subset."""
    samples: int
    """Random subsets J."""
    expected_theta: float | None
    """The θ to expect (effect units) when ``residual`` was given, else None (see ``theta_per_residual``)."""
    theta_per_residual: float
    """The bound's width ``f · se`` over R: θ ≈ largest unverified |effect| + this × R."""
    cost_per_pair: float
    """Forward-pass equivalents per pair: capture passes + J × the subset cost."""
    bound: str
    n_units: int
    delta: float
    explanation: str


def width(n_units: int, samples: int, p: float, delta: float, check: int | None = None) -> float:
    """f · se / R for the unit of widest interval: the bound's half-width in units of the residual energy R
    (inf when the variance bound is not finite). The widest interval is the unit in fewest subsets, about
    the 1/N quantile of Binomial(J, p) (:func:`fewest`). ``check``: plan for
    :class:`~atpstar.diagnostics.theta.ThetaBelow`'s check i (one variance bound at δ/4 shared by every check,
    δ/(2 i (i + 1)) for the union over the units) instead of one diagnostic at δ (δ/2 each)."""
    n_in = fewest(n_units, samples, p)
    spread = math.sqrt(p * (1 - p) * (1 / n_in + 1 / (samples - n_in)))  # se / R for that unit
    if check is None:
        return multiplier(delta, n_units, samples, p) * spread
    d_var = spent_delta(delta / 2, 1)
    g = variance_slack(d_var, samples, p)
    if math.isinf(g):
        return math.inf
    return multiplier(d_var + spent_delta(delta / 2, check), n_units, samples, p, variance_delta=d_var) * spread / math.sqrt(1 - g)


def fewest(n_units: int, samples: int, p: float) -> float:
    """About the fewest subsets any of N units is in (or out of): the 1/N quantile of Binomial(J, min(p, 1 − p)),
    at least 1."""
    return max(1.0, float(binom.ppf(1 / n_units, samples, min(p, 1 - p))))


def expected_theta(n_units: int, samples: int, p: float, delta: float, residual: float, largest: float = 0.0,
                   bound: str = "capped", check: int | None = None) -> float:
    """The θ to expect from J = ``samples`` subsets at ``p`` when the residual energy is ``residual`` (R) and
    the largest unverified |effect| is ``largest`` (module docstring)."""
    se = residual / math.sqrt(samples)
    noise = float(norm.isf(1 / (2 * n_units))) * se  # the largest |ĉ| of N units whose effect is 0
    theta = max(largest, noise) + width(n_units, samples, p, delta, check) * residual
    if bound == "capped":
        d_var = delta / 2 if check is None else spent_delta(delta / 2, 1)
        g = variance_slack(d_var, samples, p)
        if math.isfinite(g):
            theta = min(theta, largest + residual / math.sqrt(1 - g))
    return theta


def plan(n_units: int, budget: float, delta: float = 0.05, residual: float | None = None,
         largest_verified: float | None = None, largest: float = 0.0, bound: str = "capped",
         max_subset: float = MAX_SUBSET, subset_cost: float = SUBSET_COST, capture: float = CAPTURE,
         check: int | None = None, grid=P_GRID) -> Plan:
    """The design that minimises the expected θ for ``n_units`` unverified units at ``budget`` forward-pass
    equivalents per pair (capture passes included).

    ``residual``: R = √Σ q² r², the residual energy left after subtracting the estimates (None: θ is given
    per unit of R only); ``largest``: the largest unverified |effect| you expect (0: the θ to expect when
    nothing large is left); ``largest_verified``: the largest verified |effect|, to say whether θ can rule
    out units that large. ``check``: plan for the stop rule's i-th check (see :func:`width`).
    ``max_subset``: largest expected units per subset (additivity). Raises ValueError when no p of the
    grid gives a finite bound within the budget."""
    _check(n_units, budget, delta, bound, max_subset, subset_cost)
    samples = int((budget - capture) // subset_cost)
    scale = 1.0 if residual is None else float(residual)
    best = None
    for p in grid:
        if p * n_units > max_subset or (bound == "subgaussian" and not _observed(n_units, samples, p)):
            continue
        theta = expected_theta(n_units, samples, p, delta, scale, largest, bound, check)
        if math.isfinite(theta) and (best is None or theta < best[1]):
            best = (p, theta)
    if best is None:
        need = _smallest_budget(n_units, delta, max_subset, subset_cost, capture, grid, bound)
        raise ValueError(f"a budget of {budget:g} forward-pass equivalents per pair pays for {samples} subsets, too "
                         f"few for a finite {bound} bound over {n_units} units with at most {max_subset:g} per subset; give "
                         f"at least {need:g}, or raise max_subset")
    p, theta = best
    k = width(n_units, samples, p, delta, check)
    cost = capture + samples * subset_cost
    per_r = expected_theta(n_units, samples, p, delta, 1.0, 0.0, bound, check)  # θ per unit of R, nothing large left
    return Plan(p, samples, theta if residual is not None else None, k, cost, bound, n_units, delta,
                _explain(n_units, samples, p, k, theta, residual, largest_verified, cost, delta, per_r))


def _observed(n_units: int, samples: int, p: float) -> bool:
    """Few enough units expected in no subset or in all (those make the sub-Gaussian θ infinite)."""
    return n_units * ((1 - p) ** samples + p ** samples) <= UNOBSERVED


def _smallest_budget(n_units, delta, max_subset, subset_cost, capture, grid, bound) -> float:
    """The least budget at which some p of the grid gives a finite plan (for the error message)."""
    for samples in sorted({2 ** k for k in range(1, 24)} | {int(1.5 * 2 ** k) for k in range(1, 23)}):
        if any(p * n_units <= max_subset and (bound != "subgaussian" or _observed(n_units, samples, p))
               and math.isfinite(width(n_units, samples, p, delta)) for p in grid):
            return capture + samples * subset_cost
    return math.inf


def _explain(n_units, samples, p, k, theta, residual, largest_verified, cost, delta, per_r) -> str:
    text = (f"{samples} subsets at p = {p:g} (about {p * n_units:.0f} of the {n_units} unverified units each), "
            f"{cost:.0f} forward-pass equivalents per pair: the bound's width is {k:.3g} × R, R = √Σ residual² "
            f"(the effects left after subtracting the estimates), at δ = {delta:g}")
    if residual is not None:
        text += f"; with R = {residual:.3g}, expect θ ≈ {theta:.3g}"
    if largest_verified:
        need = largest_verified / per_r  # the noise of N units' statistics counts too, not only the width
        text += (f". θ rules out units as large as the largest verified effect ({largest_verified:.3g}) only if "
                 f"R < {need:.3g}")
        if residual is not None:
            text += " (it does)" if theta < largest_verified else " (it does not: verify more, or raise the budget)"
    return text + "."


def _check(n_units, budget, delta, bound, max_subset, subset_cost) -> None:
    if isinstance(n_units, bool) or not isinstance(n_units, int) or n_units < 1:
        raise ValueError(f"n_units must be a positive integer (the unverified units), got {n_units!r}")
    if not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"budget must be positive (forward-pass equivalents per pair), got {budget!r}")
    check_probability(delta, "delta")
    if bound not in ("subgaussian", "capped"):
        raise ValueError(f"plan covers the finite-sample bounds 'subgaussian' and 'capped', got {bound!r}")
    if not max_subset > 0 or not subset_cost > 0:
        raise ValueError(f"max_subset and subset_cost must be positive, got {max_subset!r}, {subset_cost!r}")
