"""The statistics of the false-negative bound (SPEC.md §9; derivation in docs/diagnostic.md).

Pure tensor mathematics, no model: random subsets ``S_j`` of N nodes (each node in independently
with probability ``p``) and one number ``y_j`` per subset (its joint-patch effect minus the
predicted effect, see :mod:`atpstar.diagnose.diagnostic`). Under additivity ``y_j = Σ_{n∈S_j} r(n)``, the
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

import torch
from scipy.optimize import brentq
from scipy.stats import norm
from torch import Tensor

BOUNDS = ("subgaussian", "normal")
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


def multiplier(delta: float, n_nodes: int, n_samples: int, p: float, bound: str = "subgaussian") -> float:
    """f(δ): the simultaneous bound is ``|ĉ(n)| + f(δ) · se(n)`` over ``n_nodes`` nodes.

    ``"subgaussian"``: δ split in two halves, one for an upper confidence bound on the variance of y
    (Maurer's inequality for the non-negative U-statistic s², inflating it by ``1/(1 − g)``), one
    for a union bound over the nodes of the sub-Gaussian (Kearns–Saul) tail of each d(n); finite-
    sample and rigorous when effects are additive within subsets. ``inf`` when ``n_samples`` is
    below :func:`min_samples`. ``"normal"``: Bonferroni over normal tails, ``Φ⁻¹(1 − δ/(2N))``;
    asymptotic (central limit theorem), can under-cover when few nodes dominate and p is small."""
    if bound == "normal":
        return float(norm.isf(delta / (2 * n_nodes)))
    if bound != "subgaussian":
        raise ValueError(f"unknown bound {bound!r}; use one of {BOUNDS}")
    d_nodes, d_var = delta / 2, delta / 2
    g = math.sqrt(2 * kurtosis_factor(p) * math.log(1 / d_var) / (n_samples // 2))
    if g >= 1:
        return math.inf
    ratio = bernoulli_proxy(p) / (p * (1 - p))  # sub-Gaussian proxy over the true Bernoulli variance
    return math.sqrt(2 * math.log(2 * n_nodes / d_nodes) * ratio / (1 - g))


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

    def multiplier(self, delta: float) -> float:
        return multiplier(delta, self.n_nodes, self.samples, self.p, self.bound)

    def upper(self, delta: float) -> Tensor:
        """(N,) per-node upper bound on |c(n)|, all valid together with probability ≥ 1 − δ."""
        f = self.multiplier(delta)
        width = torch.where(self.se > 0, f * self.se, torch.zeros_like(self.se))  # 0 · inf stays 0
        return torch.where(torch.isfinite(self.se), self.effect.abs() + width, torch.full_like(self.se, math.inf))

    def theta(self, delta: float) -> float:
        """Smallest θ with: with probability ≥ 1 − δ, no node has |c(n)| > θ."""
        return float(self.upper(delta).max())

    def prob_exceeds(self, theta: float) -> float:
        """The smallest δ at which the bound reaches ``theta`` (1 if none does): a p-value for "some
        node has |c(n)| > θ", i.e. that event is excluded at every level above it."""
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


def _smallest_delta(n_nodes: int, n_samples: int, p: float, bound: str) -> float:
    """Below this δ the multiplier is infinite (sub-Gaussian: g ≥ 1) or not worth resolving."""
    if bound == "normal":
        return 1e-300
    return min(max(1e-300, 2 * math.exp(-(n_samples // 2) / (2 * kurtosis_factor(p))) * (1 + 1e-9)), 0.5)


def node_stats(sums: SubsetSums, p: float, estimate: Tensor | None = None, bound: str = "subgaussian",
               scale: Tensor | None = None) -> NodeStats:
    """Included-minus-excluded statistics of every node from the accumulated sums.

    ``estimate``: (N,) ê(n) that was subtracted from every subset's effect (None: nothing was).
    ``scale``: (N,) factor from y's units to the effect's (pairs of several lengths: a node present
    in a fraction q of the pairs adds q·c(n) to a subset's mean over pairs, so scale = 1/q)."""
    check_probability(p, "p")
    if bound not in BOUNDS:
        raise ValueError(f"unknown bound {bound!r}; use one of {BOUNDS}")
    y = torch.tensor(sums.y, dtype=torch.float64)
    n_samples = len(y)
    if n_samples < 2:
        raise ValueError(f"need at least 2 subsets for a variance, got {n_samples}")
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
    return NodeStats(base + diff, diff, se, sums.count, variance, n_samples, p, bound)


def check_probability(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{name} must be a probability strictly between 0 and 1, got {value!r}")
