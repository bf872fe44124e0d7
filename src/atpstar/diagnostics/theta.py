"""The ``ThetaBelow`` stop rule (docs/diagnostic.md §5): verify until nothing large can be left unverified.

One diagnostic (:func:`~atpstar.diagnostics.diagnostic.diagnose`) is drawn at the first check, with one
upper confidence bound on its variance (δ/2) shared by every later check; every later check re-bounds
from the same subsets (:meth:`~atpstar.diagnostics.diagnosis.Diagnosis.rebound`), no new forward pass, and
pays only its union bound over the nodes (δ/(2 i (i + 1)) at check i).
"""

from __future__ import annotations

import dataclasses
import math

from .bound import min_samples, spent_delta
from ..cost import Cost
from .diagnostic import diagnose
from .sampling import check_options

__all__ = ["ThetaBelow"]


class ThetaBelow:
    """Stop rule for :func:`atpstar.verify`: stop once nothing large can be left unverified.

    ``verify(model, pairs, scores, stop=ThetaBelow(relative=0.1, estimates=scores))`` patches ``samples``
    random subsets of the unverified nodes **once** (at the first check), then after every ``every``-th
    chunk re-bounds from the same subsets (:meth:`Diagnosis.rebound`: the newly verified nodes get their
    exact effects, no new forward pass) and stops when, with probability ≥ 1 − δ, no unverified node has
    |c(n)| ≥ the threshold: ``target`` (absolute), ``relative`` × the largest |effect| verified so far, or
    the larger of the two when both are given. The same rule stops :func:`atpstar.verify` on
    edges (``stop=ThetaBelow(relative=0.1, estimates=edge_scores)``): the draw is then
    :func:`~atpstar.diagnostics.edges.diagnose_edges` of the unverified edges.

    ``shared=True`` (default): one variance bound, made at the draw, serves every check (verifying a node
    lowers the variance by a known amount, docs/diagnostic.md §5); check i spends δ/(2 i (i + 1)) on its
    union bound over the nodes, so its own statement holds with probability ≥ 1 − :meth:`level` (i) and all
    checks hold at once with probability ≥ 1 − δ: θ stays finite however many checks. δ/2 goes to variance
    bounds: with ``refresh`` (default) the draw's takes δ/4 and fresh ones at checks 2, 4, 8, ... share the
    rest (:meth:`variance_level`), each kept only where tighter than the carried one; without, the draw's
    takes δ/2. ``shared=False``:
    the former rule, the whole bound at level δ/(i(i+1)) per check (its variance bound runs out after a few
    checks; then new subsets are drawn), kept for comparison.

    ``drop`` (default None: keep every subset): subsets holding a node verified since with |effect| ≥ ``drop`` ×
    the largest verified |effect| are left out of the re-bound (their interactions stay in the subset's
    effect); when fewer than 2 are left, the re-bound keeps them all. On SmolLM2 leaving subsets out cost
    more (fewer subsets) than it saved (docs/diagnostic.md §9.1), hence the default. Defaults ``samples=300,
    p=0.1``: the best measured θ at that cost (≈ 0.9 forward-pass equivalents per subset and pair).
    Keyword arguments (``estimates=``, ``kinds=`` ...) go to :func:`diagnose`; ``bound`` defaults to
    ``"capped"``. ``history`` keeps ``(verified nodes, θ, diagnostic forward
    equivalents per pair so far)`` per check, ``last`` the latest :class:`Diagnosis`, ``cost`` (a Cost) the
    diagnostic's work, which is not in the Verification's cost.
    """

    def __init__(self, target: float | None = None, samples: int = 300, p: float = 0.1, delta: float = 0.05,
                 every: int = 1, relative: float | None = None, drop: float | None = None, shared: bool = True,
                 refresh: bool = True, **options):
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
        # the first variance bound is made at δ/2 (shared, no refresh: min_samples(p, δ) checks it) or δ/4
        check_options(samples, p, delta if shared and not refresh else delta / 2, options["bound"])
        self.target = None if target is None else float(target)
        self.relative = None if relative is None else float(relative)
        self.samples, self.p, self.delta, self.every, self.drop = samples, p, delta, every, drop
        self.shared, self.refresh = bool(shared), bool(refresh)
        self.options = {"progress": False, **options}
        self.calls, self.checks, self.history, self.last, self.base, self.cost = 0, 0, [], None, None, Cost()
        self.draws = 0
        """Diagnostics drawn (1 unless the subsets were used up; always 1 when shared)."""

    def level(self, check: int) -> float:
        """δ of check ``check``'s own statement. Shared: the δ of the variance bounds made so far (at most δ/2
        in all, :meth:`variance_level`) + δ/(2 i (i + 1)) for the union over the nodes; otherwise δ/(i (i + 1)).
        Either way all checks together spend at most δ."""
        if self.shared:
            spent = sum(v for i in range(1, check + 1) if (v := self.variance_level(i)) is not None)
            return spent + spent_delta(self.delta / 2, check)
        return spent_delta(self.delta, check)

    def variance_level(self, check: int) -> float | None:
        """δ of the variance bound made at check ``check`` (shared): the draw's at check 1 (δ/2 without
        refreshes), then, with ``refresh``, fresh ones at checks 2, 4, 8, ... (the k-th at δ/(2k(k+1))), all
        from the δ/2 reserve; None at the other checks (the bound is carried forward)."""
        if check == 1:
            return spent_delta(self.delta / 2, 1) if self.refresh else self.delta / 2
        if not self.refresh or check & (check - 1):
            return None
        return spent_delta(self.delta / 2, check.bit_length())

    def threshold(self, state) -> float:
        """The θ to beat now: target, relative × the largest |effect| verified so far, or the larger."""
        cut = 0.0 if self.target is None else self.target
        if self.relative is not None and len(state.effect):
            cut = max(cut, self.relative * float(state.effect.abs().nan_to_num(0.0).max()))
        return cut

    def drop_above(self, verified) -> float | None:
        """|effect| at or above which a verified node's subsets are left out (None: none); it depends on the
        verified effects only, never on the subsets' values (which keeps the re-bound rigorous)."""
        effect = verified.effect if hasattr(verified, "effect") else verified[1]
        largest = float(effect.abs().nan_to_num(0.0).max()) if len(effect) else 0.0
        return None if self.drop is None or largest == 0 else self.drop * largest

    def start(self, drawn):
        """The first check's diagnosis from a fresh draw: with ``shared``, its variance bound made now and
        shared by every later check (:meth:`Diagnosis.share_variance`)."""
        if not self.shared or drawn.stats is None:
            return drawn
        return drawn.share_variance(self.variance_level(1), delta=self.level(1))

    def rebound(self, verified, check: int):
        """The drawn subsets re-bounded for ``verified`` at check ``check``'s level (None: no valid bound); with
        ``shared``, the variance bound is refreshed at the checks of :meth:`variance_level`."""
        cut = self.drop_above(verified)
        try:
            found = self.base.rebound(verified, delta=self.level(check), drop_above=cut)
        except ValueError:  # too few subsets left without the large verified nodes
            if not self.shared or cut is None:
                return None
            try:
                found = self.base.rebound(verified, delta=self.level(check))
            except ValueError:
                return None
        fresh = self.variance_level(check) if self.shared else None
        if fresh is not None and found.stats is not None:
            found = found.refresh_variance(fresh)
        elif fresh is not None:  # nothing left to bound: the level still counts the refresh's δ
            found = dataclasses.replace(found, delta=self.level(check))
        return found

    @staticmethod
    def _draw(state, level: float, options: dict):
        """A fresh diagnostic of what ``state`` (a Verification of nodes or of edges) left unverified."""
        return diagnose(state.model, state.pairs, state, delta=level, metric=state.metric, **options)

    def __call__(self, state) -> str | None:
        self.calls += 1
        if self.calls % self.every or len(state.nodes) == len(state.ranking):
            return None
        self.checks += 1
        level = self.level(self.checks)
        found = None if self.base is None else self.rebound(state, self.checks)
        fresh_ok = not self.shared and self.samples >= min_samples(self.p, level)  # else a new draw is infinite too
        if self.base is None or (found is None or not math.isfinite(found.theta)) and fresh_ok:
            # first check, or (not shared) the subsets are used up: draw anew
            options = {**self.options, "seed": self.options.get("seed", 0) + 7919 * self.draws, "samples": self.samples,
                       "p": self.p}
            self.draws += 1
            found = self.start(self._draw(state, level, options))
            self.base = found
            self.cost = self.cost + found.cost
        elif self.shared and found is not None:
            self.base = found  # carries the (refreshed) variance bound and the verified nodes to the next check
        if found is None:  # nothing valid at this level: no statement, keep verifying
            self.history.append((len(state.nodes), math.inf, self.cost.per_pair()))
            return None
        self.last = found
        self.history.append((len(state.nodes), found.theta, self.cost.per_pair()))
        cut = self.threshold(state)
        if cut > 0 and found.theta < cut:
            return (f"theta below target: with probability >= {1 - self.delta:g} no unverified {found.UNIT} has "
                    f"|c(n)| > {found.theta:.4g} < {cut:.4g}")
        return None
