"""The statistics of the false-negative bound (derivation in docs/diagnostic.md).

Pure tensor mathematics, no model: random subsets ``S_j`` of N nodes (each node in independently
with probability ``p``) and one number ``y_j`` per subset (its joint-patch effect minus the
predicted effect, see :mod:`atpstar.diagnostics.diagnostic`). Under additivity ``y_j = Σ_{n∈S_j} r(n)``, the
per-node *included-minus-excluded* difference

    d(n) = mean{y_j : n ∈ S_j} − mean{y_j : n ∉ S_j}

is unbiased for ``r(n)`` with standard error ``se(n) = sqrt(s² (1/n₁ + 1/n₀))`` (s² the sample
variance of y, n₁/n₀ the subsets with/without n). Every bound here has the form

    |c(n)| ≤ |ĉ(n)| + f(δ) · se(n)   for all n at once, with probability ≥ 1 − δ,

where ``ĉ(n) = ê(n) + d(n)`` and ``f(δ)`` is a scalar multiplier: :func:`multiplier` gives it for the
finite-sample sub-Gaussian bound (rigorous under additivity) and for the asymptotic normal one.
Per-node sums are accumulated as tensors (:class:`SubsetSums`), so N may be millions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import norm
from torch import Tensor

BOUNDS = ("subgaussian", "capped", "normal")
COLUMN_BLOCK = 1 << 16  # nodes per block when multiplying a membership matrix (memory: B × block doubles)


def bernoulli_proxy(p: float) -> float:
    """Optimal sub-Gaussian variance proxy of a centred Bernoulli(p) (Kearns & Saul 1998):
    ``E exp(λ(X − p)) ≤ exp(λ² σ²/2)`` for all λ with ``σ² = (1 − 2p) / (2 ln((1 − p)/p))`` (1/4 at p = 1/2)."""
    if abs(p - 0.5) < 1e-9:
        return 0.25
    return (1 - 2 * p) / (2 * math.log((1 - p) / p))


def kurtosis_factor(p: float) -> float:
    """κ with ``E[Z²] ≤ κ E[Z]²`` for ``Z = (y − y')²/2`` of two independent subsets under additivity:
    ``κ = max(3, 1 / (2 p (1 − p)))`` (docs/diagnostic.md, "the variance")."""
    return max(3.0, 1.0 / (2 * p * (1 - p)))


def min_samples(p: float, delta: float) -> int:
    """Fewest subsets for which the sub-Gaussian bound is finite (its variance bound needs
    ``floor(J/2) > 2 κ ln(2/δ)``)."""
    return 2 * (math.floor(2 * kurtosis_factor(p) * math.log(2 / delta)) + 1)


def variance_slack(delta_var: float, n_samples: int, p: float) -> float:
    """g with ``P(Var y > s² / (1 − g)) ≤ δ_var`` under additivity (Maurer's inequality for the
    non-negative U-statistic s², ``floor(J/2)`` independent pairs, ``E Z² ≤ κ (E Z)²``); ``inf`` when ≥ 1."""
    g = math.sqrt(2 * kurtosis_factor(p) * math.log(1 / delta_var) / (n_samples // 2))
    return g if g < 1 else math.inf


def spent_delta(delta: float, check: int) -> float:
    """δ of the ``check``-th bound (1, 2, ...) of a sequence that must hold at every check at once:
    ``δ / (i (i + 1))``, which sums to δ over any number of checks (a union bound; a stop rule may then
    stop at whichever check it likes)."""
    if check < 1:
        raise ValueError(f"checks are numbered from 1, got {check}")
    return delta / (check * (check + 1))


def multiplier(delta: float, n_nodes: int, n_samples: int, p: float, bound: str = "subgaussian",
               variance_delta: float | None = None) -> float:
    """f(δ): the simultaneous bound is ``|ĉ(n)| + f(δ) · se(n)`` over ``n_nodes`` nodes.

    ``"subgaussian"``: δ split in two halves, one for an upper confidence bound on the variance of y
    (Maurer's inequality for the non-negative U-statistic s², inflating it by ``1/(1 − g)``), one
    for a union bound over the nodes of the sub-Gaussian (Kearns–Saul) tail of each d(n); finite-
    sample and rigorous when effects are additive within subsets. ``inf`` when ``n_samples`` is
    below :func:`min_samples`. ``"normal"``: Bonferroni over normal tails, ``Φ⁻¹(1 − δ/(2N))``;
    asymptotic (central limit theorem), can under-cover when few nodes dominate and p is small.

    ``variance_delta``: the variance bound was already paid for (a shared one, :class:`NodeStats`'s
    ``variance_bound``, made at that level): the whole rest ``delta − variance_delta`` goes to the union
    bound over the nodes, and f multiplies the standard error *computed from that variance bound*, so
    it carries no ``1/(1 − g)`` (``inf`` when ``delta ≤ variance_delta``)."""
    if bound == "normal":
        return float(norm.isf(delta / (2 * n_nodes)))
    if bound not in ("subgaussian", "capped"):
        raise ValueError(f"unknown bound {bound!r}; use one of {BOUNDS}")
    ratio = bernoulli_proxy(p) / (p * (1 - p))  # sub-Gaussian proxy over the true Bernoulli variance
    if variance_delta is not None:
        d_nodes = delta - variance_delta
        return math.sqrt(2 * math.log(2 * n_nodes / d_nodes) * ratio) if d_nodes > 0 else math.inf
    d_nodes, d_var = delta / 2, delta / 2
    g = variance_slack(d_var, n_samples, p)
    if math.isinf(g):
        return math.inf
    return math.sqrt(2 * math.log(2 * n_nodes / d_nodes) * ratio / (1 - g))


def variance_bound(variance: float, delta_var: float, n_samples: int, p: float) -> float:
    """V̄ with ``P(Var y > V̄) ≤ δ_var`` under additivity: ``s² / (1 − g)`` (:func:`variance_slack`; inf when g ≥ 1).
    Made once, at the draw, it bounds every later re-bound's variance too (:func:`shared_variance`)."""
    g = variance_slack(delta_var, n_samples, p)
    return variance / (1 - g) if math.isfinite(g) else math.inf


def shared_variance(bound0: float, removed: float, p: float) -> float:
    """The variance bound after verifying nodes since the draw (docs/diagnostic.md §5): under additivity the
    population variance of a subset's value is ``p (1 − p) Σ_m q_m² r(m)²`` over the unverified nodes, so
    verifying nodes (residual → 0) lowers it by exactly ``p (1 − p) · removed``, ``removed = Σ_verified
    q² r₀²`` with r₀ = c − ê₀ the residual at the draw; ``bound0`` (a bound on the draw's variance)
    minus that is a bound on today's, on the same event. Never below 0."""
    return max(0.0, bound0 - p * (1 - p) * removed)


def members_dot(members: Tensor, values: Tensor) -> Tensor:
    """(B,) float64 ``members @ values`` for a (B, N) bool matrix, in column blocks (flat memory)."""
    out = torch.zeros(members.shape[0], dtype=torch.float64)
    for lo in range(0, members.shape[1], COLUMN_BLOCK):
        out += members[:, lo:lo + COLUMN_BLOCK].double() @ values[lo:lo + COLUMN_BLOCK].double()
    return out


@dataclass
class SubsetSums:
    """Running per-node sums over the subsets seen so far: all the bound needs."""

    n_nodes: int
    count: Tensor = None
    """(N,) int64: subsets containing each node (n₁)."""
    sum_in: Tensor = None
    """(N,) float64: sum of y over the subsets containing each node."""
    y: list = field(default_factory=list)
    """Every y_j so far (J floats)."""

    def __post_init__(self):
        if self.count is None:
            self.count = torch.zeros(self.n_nodes, dtype=torch.long)
            self.sum_in = torch.zeros(self.n_nodes, dtype=torch.float64)

    def add(self, members: Tensor, y: Tensor) -> None:
        """Add B subsets: ``members`` (B, N) bool, ``y`` (B,) their values."""
        y = torch.as_tensor(y, dtype=torch.float64).flatten()
        if members.shape != (len(y), self.n_nodes) or members.dtype != torch.bool:
            raise ValueError(f"members must be ({len(y)}, {self.n_nodes}) bool, got {tuple(members.shape)} {members.dtype}")
        if not torch.isfinite(y).all():
            raise FloatingPointError("a subset value is NaN or infinite; it would make every bound NaN")
        self.count += members.sum(0)
        for lo in range(0, self.n_nodes, COLUMN_BLOCK):
            self.sum_in[lo:lo + COLUMN_BLOCK] += y @ members[:, lo:lo + COLUMN_BLOCK].double()
        self.y.extend(y.tolist())

    @property
    def samples(self) -> int:
        return len(self.y)


@dataclass
class NodeStats:
    """Per-node statistics and the simultaneous bound, for N nodes and J subsets."""

    effect: Tensor
    """(N,) ĉ(n) = ê(n) + d(n): the estimate of the node's mean effect."""
    diff: Tensor
    """(N,) d(n), included-minus-excluded mean of y (NaN where n₁ or n₀ is 0)."""
    se: Tensor
    """(N,) standard error of d(n): sqrt(s² (1/n₁ + 1/n₀)) (inf where unobserved)."""
    count: Tensor
    """(N,) n₁: subsets containing the node."""
    variance: float
    """s²: sample variance of y over the J subsets."""
    samples: int
    p: float
    bound: str
    estimate: Tensor | None = None
    """(N,) ê(n) subtracted from the subsets (None: 0)."""
    scale: Tensor | None = None
    """(N,) factor from y's units to the effect's (1/q_n; None: 1)."""
    variance_bound: float | None = None
    """V̄: an upper confidence bound on the population variance of y made earlier, at level
    ``variance_delta`` (:func:`shared_variance`); None: the bound makes its own from s² at every δ."""
    variance_delta: float = 0.0
    """δ already spent on ``variance_bound`` (a bound at level δ then spends δ − variance_delta on the nodes)."""

    @property
    def n_nodes(self) -> int:
        return len(self.effect)

    @property
    def z(self) -> Tensor:
        """ĉ(n) / se(n): evidence that the node's effect is not 0."""
        return self.effect / self.se

    @property
    def unobserved(self) -> int:
        """Nodes in no subset or in every subset: they cannot be bounded (θ = inf)."""
        return int((~torch.isfinite(self.se)).sum())

    @property
    def shared(self) -> bool:
        """The bound uses a variance bound made earlier (``variance_bound``), not one from s² at each δ."""
        return self.variance_bound is not None and self.bound != "normal"

    def multiplier(self, delta: float) -> float:
        return multiplier(delta, self.n_nodes, self.samples, self.p, self.bound,
                          self.variance_delta if self.shared else None)

    def energy(self, delta: float) -> float:
        """B: upper confidence bound on the residual energy ``Σ_m q_m² r(m)²`` (under additivity), on the
        same variance event as the sub-Gaussian bound at level δ (its δ/2 half): ``s² / ((1 − g) p (1 − p))``;
        with a shared variance bound V̄, ``V̄ / (p (1 − p))`` (on V̄'s event)."""
        if self.shared:
            return self.variance_bound / (self.p * (1 - self.p))
        g = variance_slack(delta / 2, self.samples, self.p)
        return self.variance / ((1 - g) * self.p * (1 - self.p)) if math.isfinite(g) else math.inf

    def _width_se(self) -> Tensor:
        """(N,) the standard error the multiplier scales: se from s², or from V̄ when the variance is shared."""
        if not self.shared:
            return self.se
        n_in = self.count.double()
        spread = (1 / n_in + 1 / (self.samples - n_in)).sqrt()
        spread = torch.where(torch.isfinite(self.se), spread, math.inf)
        return spread * math.sqrt(self.variance_bound) * (1 if self.scale is None else self.scale)

    def upper(self, delta: float) -> Tensor:
        """(N,) per-node upper bound on |c(n)|, all valid together with probability ≥ 1 − δ."""
        f = self.multiplier(delta)
        se = self._width_se()
        width = torch.where(se > 0, f * se, torch.zeros_like(se))  # 0 · inf stays 0
        out = torch.where(torch.isfinite(self.se), self.effect.abs() + width, torch.full_like(self.se, math.inf))
        if self.bound == "capped":  # |c| ≤ |ê| + |r| and q|r| ≤ sqrt(B): the residual energy caps every node
            base = torch.zeros_like(out) if self.estimate is None else self.estimate.abs()
            scale = torch.ones_like(out) if self.scale is None else self.scale
            out = torch.minimum(out, base + math.sqrt(self.energy(delta)) * scale)
        return out

    def theta(self, delta: float) -> float:
        """Smallest θ with: with probability ≥ 1 − δ, no node has |c(n)| > θ."""
        return float(self.upper(delta).max())

    def prob_exceeds(self, theta: float) -> float:
        """The smallest δ at which the bound reaches ``theta`` (1 if none does): a p-value for "some
        node has |c(n)| > θ", i.e. that event is excluded at every level above it."""
        if self.bound == "capped" or self.shared:
            return self._invert(theta)
        if self.unobserved:
            return 1.0
        under = self.effect.abs() <= theta
        room = torch.where(self.se > 0, (theta - self.effect.abs()) / self.se,
                           torch.where(under, math.inf, -math.inf))  # the largest f keeping each node under θ
        f_max = float(room.min())
        lo, hi = _smallest_delta(self.n_nodes, self.samples, self.p, self.bound), 1 - 1e-12
        if f_max < 0 or self.multiplier(hi) > f_max:
            return 1.0
        if self.multiplier(lo) <= f_max:
            return lo
        gap = lambda x: min(self.multiplier(math.exp(x)), 1e300) - f_max  # noqa: E731
        return math.exp(brentq(gap, math.log(lo), math.log(hi), xtol=1e-12))


    def _invert(self, theta: float) -> float:
        """prob_exceeds by bisection on log δ (θ(δ) is non-increasing in δ)."""
        lo, hi = _smallest_delta(self.n_nodes, self.samples, self.p, self.bound), 1 - 1e-12
        if self.shared:  # below the δ already spent on the variance bound the bound is infinite
            lo = min(self.variance_delta * (1 + 1e-9) + 1e-300, 0.5 * (1 + self.variance_delta))
        if self.theta(hi) > theta:
            return 1.0
        if self.theta(lo) <= theta:
            return lo
        a, b = math.log(lo), math.log(hi)  # theta(e^a) > θ >= theta(e^b)
        while b - a > 1e-10:
            mid = (a + b) / 2
            a, b = (mid, b) if self.theta(math.exp(mid)) > theta else (a, mid)
        return math.exp(b)


def _smallest_delta(n_nodes: int, n_samples: int, p: float, bound: str) -> float:
    """Below this δ the multiplier is infinite (sub-Gaussian: g ≥ 1) or not worth resolving."""
    if bound == "normal":
        return 1e-300
    return min(max(1e-300, 2 * math.exp(-(n_samples // 2) / (2 * kurtosis_factor(p))) * (1 + 1e-9)), 0.5)


def node_stats(sums: SubsetSums, p: float, estimate: Tensor | None = None, bound: str = "subgaussian",
               scale: Tensor | None = None, variance_bound: float | None = None,
               variance_delta: float = 0.0) -> NodeStats:
    """Included-minus-excluded statistics of every node from the accumulated sums.

    ``estimate``: (N,) ê(n) that was subtracted from every subset's effect (None: nothing was).
    ``scale``: (N,) factor from y's units to the effect's (pairs of several lengths: a node present
    in a fraction q of the pairs adds q·c(n) to a subset's mean over pairs, so scale = 1/q).
    ``variance_bound``, ``variance_delta``: a shared variance bound made earlier (see :class:`NodeStats`)."""
    check_probability(p, "p")
    if bound not in BOUNDS:
        raise ValueError(f"unknown bound {bound!r}; use one of {BOUNDS}")
    y = torch.tensor(sums.y, dtype=torch.float64)
    n_samples = len(y)
    if n_samples < 2:
        raise ValueError(f"need at least 2 subsets for a variance, got {n_samples} (after leaving out the subsets "
                         "of large verified nodes, if any)")
    n_in = sums.count.double()
    n_out = n_samples - n_in
    mean_in = sums.sum_in / n_in
    mean_out = (y.sum() - sums.sum_in) / n_out
    observed = (n_in > 0) & (n_out > 0)
    diff = torch.where(observed, mean_in - mean_out, torch.nan)
    variance = float(y.var(correction=1))
    se = torch.where(observed, (variance * (1 / n_in + 1 / n_out)).sqrt(), math.inf)
    if scale is not None:
        diff, se = diff * scale, se * scale
    base = torch.zeros_like(diff) if estimate is None else estimate.double().nan_to_num()
    return NodeStats(base + diff, diff, se, sums.count, variance, n_samples, p, bound, base,
                     None if scale is None else scale.double(), variance_bound, variance_delta)


def check_probability(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")


def subset_seed(seed: int, j: int) -> int:
    """Seed of subset ``j``'s membership (independent streams via numpy's SeedSequence)."""
    words = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(j)]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def memberships(n_nodes: int, p: float, seed: int, first: int, count: int) -> Tensor:
    """(count, n_nodes) bool memberships of subsets ``first .. first+count-1`` (each drawn from ``(seed, j)`` only)."""
    out = torch.empty(count, n_nodes, dtype=torch.bool)
    gen = torch.Generator()
    for row in range(count):
        gen.manual_seed(subset_seed(seed, first + row))
        out[row].bernoulli_(p, generator=gen)
    return out


def rebound_stats(subset_mean: Tensor, predict: Tensor, keep: Tensor, p: float, seed: int,
                  estimate: Tensor | None = None, bound: str = "subgaussian", scale: Tensor | None = None,
                  chunk: int = 256, avoid: Tensor | None = None, variance_bound: float | None = None,
                  variance_delta: float = 0.0, members: Tensor | None = None) -> NodeStats:
    """Statistics of the nodes ``keep`` from subsets already patched, no new patch (docs/diagnostic.md §5).

    ``subset_mean``: (J,) each subset's joint effect (mean over pairs); ``predict``: (N,) each node's
    predicted contribution to it, the exact one (q_n c(n)) for nodes verified since, so that their
    residual is 0; ``keep``: (N,) bool, the nodes still unverified. The memberships are regenerated from
    ``(seed, j)``. If the dropped nodes were chosen independently of the subsets (e.g. the next nodes of
    a ranking fixed before the subsets were drawn), the kept columns are a Bernoulli(p) design of the
    kept nodes alone and every bound holds for them exactly as if they had been sampled on their own.

    ``avoid``: (N,) bool, dropped nodes whose subsets are left out altogether (e.g. verified nodes with a
    large exact effect, whose interactions with the others the subtraction cannot remove). Which subsets
    go depends only on those nodes' columns, so the kept subsets are still a Bernoulli(p) design of the
    kept nodes (provided ``avoid`` is chosen independently of the subsets too).

    ``variance_bound``: today's shared variance bound (:func:`shared_variance`), valid for the kept subsets
    too: a kept subset's value has the same population variance as any subset's (docs/diagnostic.md §5).
    ``members``: the (J, N) bool memberships, if kept (else regenerated chunk by chunk)."""
    keep, all_members = torch.as_tensor(keep, dtype=torch.bool), members
    sums = SubsetSums(int(keep.sum()))
    for lo in range(0, len(subset_mean), chunk):
        rows = min(chunk, len(subset_mean) - lo)
        members = memberships(len(keep), p, seed, lo, rows) if all_members is None else all_members[lo:lo + rows]
        y = subset_mean[lo:lo + len(members)].double() - members_dot(members, predict)
        if avoid is not None and bool(avoid.any()):
            clean = ~members[:, avoid].any(1)
            members, y = members[clean], y[clean]
        sums.add(members[:, keep], y)
    return node_stats(sums, p, None if estimate is None else estimate[keep], bound,
                      None if scale is None else scale[keep], variance_bound, variance_delta)
