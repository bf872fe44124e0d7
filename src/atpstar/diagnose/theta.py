"""The ``ThetaBelow`` stop rule (docs/diagnostic.md §5): verify until nothing large can be left unverified.

One diagnostic (:func:`~atpstar.diagnose.diagnostic.diagnose`) is drawn at the first check; every later
check re-bounds from the same subsets (:meth:`~atpstar.diagnose.diagnosis.Diagnosis.rebound`), no new
forward pass.
"""

from __future__ import annotations

import math

from .bound import min_samples, spent_delta
from ..cost import Cost
from .diagnostic import check_options, diagnose

__all__ = ["ThetaBelow"]


class ThetaBelow:
    """Stop rule for :func:`atpstar.verify`: stop once nothing large can be left unverified.

    ``verify(model, pairs, scores, stop=ThetaBelow(0.1))`` patches ``samples`` random subsets of the
    unverified nodes **once** (at the first check), then after every ``every``-th chunk re-bounds from
    the same subsets (:meth:`Diagnosis.rebound`: the newly verified nodes get their exact effects, no
    new forward pass) and stops when, with probability ≥ 1 − δ, no unverified node has |c(n)| ≥ the
    threshold: ``target`` (absolute), ``relative`` × the largest |effect| verified so far, or the
    larger of the two when both are given. Check i is made at level δ/(i(i+1)), so the statement holds
    at whichever check it stops (docs/diagnostic.md §5). Subsets holding a node verified since with
    |effect| ≥ ``drop`` × the largest verified |effect| are left out of the re-bound (their interactions
    stay in the subset's effect); when too few subsets are left, or θ is infinite, new ones are drawn. Keyword arguments (``estimates=``, ``kinds=``
    ...) go to :func:`diagnose`; ``bound`` defaults to ``"capped"``. ``history`` keeps
    ``(verified nodes, θ, diagnostic forward equivalents per pair so far)`` per check, ``last`` the latest
    :class:`Diagnosis`, ``cost`` (a Cost) the diagnostic's work, which is not in the Verification's cost.
    """

    def __init__(self, target: float | None = None, samples: int = 1000, p: float = 0.05, delta: float = 0.05,
                 every: int = 1, relative: float | None = None, drop: float | None = 0.5, **options):
        if target is None and relative is None:
            raise ValueError("ThetaBelow needs target= (an absolute effect size) or relative= (a fraction of the "
                             "largest verified |effect|), or both")
        if target is not None and (not isinstance(target, (int, float)) or isinstance(target, bool) or not target > 0):
            raise ValueError(f"ThetaBelow target must be a positive number (an effect size), got {target!r}")
        if relative is not None and (isinstance(relative, bool) or not isinstance(relative, (int, float))
                                     or not 0 < relative <= 1):
            raise ValueError(f"ThetaBelow relative must be in (0, 1], got {relative!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"ThetaBelow every must be a positive integer (chunks between diagnostics), got {every!r}")
        if drop is not None and not (isinstance(drop, (int, float)) and drop > 0):
            raise ValueError(f"ThetaBelow drop must be a positive fraction or None, got {drop!r}")
        options.setdefault("bound", "capped")
        check_options(samples, p, spent_delta(delta, 1), options["bound"])
        self.target = None if target is None else float(target)
        self.relative = None if relative is None else float(relative)
        self.samples, self.p, self.delta, self.every, self.drop = samples, p, delta, every, drop
        self.options = {"progress": False, **options}
        self.calls, self.checks, self.history, self.last, self.base, self.cost = 0, 0, [], None, None, Cost()
        self.draws = 0
        """Diagnostics drawn (1 unless the subsets were used up)."""

    def threshold(self, state) -> float:
        """The θ to beat now: target, relative × the largest |effect| verified so far, or the larger."""
        cut = 0.0 if self.target is None else self.target
        if self.relative is not None and len(state.effect):
            cut = max(cut, self.relative * float(state.effect.abs().nan_to_num(0.0).max()))
        return cut

    def __call__(self, state) -> str | None:
        self.calls += 1
        if self.calls % self.every or len(state.nodes) == len(state.ranking):
            return None
        self.checks += 1
        level = spent_delta(self.delta, self.checks)
        found = None
        if self.base is not None:
            largest = float(state.effect.abs().nan_to_num(0.0).max()) if len(state.effect) else 0.0
            cut = None if self.drop is None or largest == 0 else self.drop * largest
            try:
                found = self.base.rebound(state, delta=level, drop_above=cut)
            except ValueError:  # too few subsets left without the large verified nodes
                found = None
        fresh_ok = self.samples >= min_samples(self.p, level)  # else a new draw would be infinite too
        if (found is None or not math.isfinite(found.theta)) and (fresh_ok or self.base is None):
            # first check, or the subsets are used up: draw anew
            options = {**self.options, "seed": self.options.get("seed", 0) + 7919 * self.draws}
            self.draws += 1
            self.base = found = diagnose(state.model, state.pairs, state, samples=self.samples, p=self.p, delta=level,
                                         metric=state.metric, **options)
            self.cost = self.cost + found.cost
        if found is None:  # nothing valid at this level: no statement, keep verifying
            self.history.append((len(state.nodes), math.inf, self.cost.per_pair()))
            return None
        self.last = found
        self.history.append((len(state.nodes), found.theta, self.cost.per_pair()))
        cut = self.threshold(state)
        if cut > 0 and found.theta < cut:
            return (f"theta below target: with probability >= {1 - self.delta:g} no unverified node has "
                    f"|c(n)| > {found.theta:.4g} < {cut:.4g}")
        return None
