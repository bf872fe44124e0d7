"""The ThetaBelow stop rule's shared variance bound (docs/diagnostic.md §5): one upper confidence bound on
the subsets' variance, made at the draw, serves every later re-bound, because verifying a node lowers the
(population) variance of every subset's value by exactly p (1 − p) q² r₀². Simulated additive designs
(memberships and planted effects, no model) go through the real :meth:`Diagnosis.rebound`.

Calibration tolerance as in test_diagnostic.py: k ≤ nδ + 3·sqrt(nδ(1 − δ)) failures in n seeds."""

import dataclasses
import math

import pytest
import torch

from atpstar.cost import Cost
from atpstar.diagnostics.bound import SubsetSums, memberships, node_stats, shared_variance, spent_delta, variance_bound
from atpstar.diagnostics.diagnosis import Design, Diagnosis
from atpstar.diagnostics.theta import ThetaBelow
from atpstar.nodes import NodeSet

P, J, CHECKS = 0.2, 100, 30
NODES = NodeSet(torch.zeros(300, dtype=torch.long), torch.zeros(300, dtype=torch.long), torch.arange(300),
                torch.zeros(300, dtype=torch.long))


def allowed_failures(n: int, delta: float) -> float:
    return n * delta + 3 * math.sqrt(n * delta * (1 - delta))


def planted(n_nodes=300, seed=3):
    """Effects c, estimates ê and presence q: a few large residuals (geometric, each dominating the energy
    left after it) and many small ones; two pair lengths (q = 1 or 1/2)."""
    g = torch.Generator().manual_seed(seed)
    c = 0.05 * torch.randn(n_nodes, generator=g, dtype=torch.float64)
    c[:8] = torch.tensor([8.0, -6.0, 4.5, -3.4, 2.5, -1.9, 1.4, -1.0], dtype=torch.float64)
    est = c * 0.5 * (torch.rand(n_nodes, generator=g, dtype=torch.float64) < 0.3)  # some nodes half-estimated
    presence = torch.where(torch.rand(n_nodes, generator=g) < 0.3, 0.5, 1.0).double()
    return c, est, presence


def drawn(c, est, presence, seed, p=P, samples=J) -> Diagnosis:
    """A Diagnosis of exactly additive subsets: subset mean = Σ_{n∈S} q_n c(n) (ê subtracted in the stats)."""
    n = len(c)
    members = memberships(n, p, seed, 0, samples)
    subset_mean = members.double() @ (presence * c)
    sums = SubsetSums(n)
    sums.add(members, subset_mean - members.double() @ (presence * est))
    stats = node_stats(sums, p, est, "capped", scale=1 / presence)
    nodes = NODES.take(torch.arange(n))
    design = Design(nodes, est.clone(), presence, subset_mean, torch.zeros(n, dtype=torch.bool))
    return Diagnosis(delta=0.05, p=p, samples=samples, bound="capped", nodes=nodes, stats=stats, n_unverified=n,
                     n_static=0, n_verified=0, estimates="sim", subset_effects=subset_mean[:, None], kinds=["q"],
                     n_pairs=1, cost=Cost(), seed=seed, design=design)


def run_checks(c, est, presence, seed, delta, shared=True, refresh=True, broken=None, drop=None, checks=CHECKS,
               stop_on_failure=False):
    """θ at checks 1..checks, one more node verified (largest |c| first) before each, the way ThetaBelow does
    it (its ``start`` and ``rebound``); and whether every node still unverified was under its upper bound at
    every check. ``broken``: "no-slack" (the variance bounds are s² itself, no upper confidence bound) or
    "no-pq" (subtracting Σ q² r₀² instead of p (1 − p) Σ q² r₀²: too much)."""
    rule = ThetaBelow(relative=0.1, samples=J, p=P, delta=delta, shared=shared, refresh=refresh, drop=drop)
    if broken == "no-slack":
        rule.variance_level = lambda check: 1.0 if check == 1 or (refresh and not check & (check - 1)) else None
    rule.base = rule.start(drawn(c, est, presence, seed))
    order = torch.argsort(c.abs(), descending=True)
    thetas, ok = [], True
    for i in range(1, checks + 1):
        done = order[:i - 1]
        d = rule.base if i == 1 else rule.rebound((NODES.take(done), c[done]), i)
        if broken == "no-pq" and i > 1:
            newly = d.design.removed - rule.base.design.removed
            v = max(0.0, d.design.variance_bound - (1 - P * (1 - P)) * newly)  # in all: Σ q² r₀² subtracted
            d = dataclasses.replace(d, design=dataclasses.replace(d.design, variance_bound=v),
                                    stats=dataclasses.replace(d.stats, variance_bound=v))
        if shared:
            rule.base = d
        left = torch.ones(len(c), dtype=torch.bool)
        left[done] = False
        level = rule.level(i)
        upper = d.stats.upper(level)
        ok &= bool((c[left].abs() <= upper).all())
        thetas.append(float(upper.max()))
        if stop_on_failure and not ok:
            break
    return thetas, ok


def test_the_variance_falls_by_exactly_what_the_verified_nodes_held():
    """The identity behind the shared bound: the variance of a subset's value is p (1 − p) Σ q² r² (checked on
    4000 subsets, before and after zeroing the residuals of 5 verified nodes), so verifying lowers it by
    exactly p (1 − p) Σ q² r₀²; and Diagnosis.rebound accumulates Σ q² r₀² of each newly verified node once."""
    c, est, presence = planted()
    r0 = presence * (c - est)
    members = memberships(len(c), P, 11, 0, 4000).double()
    done = torch.arange(5)
    after_r = r0.clone()
    after_r[done] = 0
    for r in (r0, after_r):
        assert float((members @ r).var()) == pytest.approx(P * (1 - P) * float(r.pow(2).sum()), rel=0.05)
    d = drawn(c, est, presence, 0).share_variance(0.025)
    again = d.rebound((d.nodes.take(done[:3]), c[done[:3]])).rebound((d.nodes.take(done), c[done]))
    assert again.design.removed == pytest.approx(float(r0[done].pow(2).sum()))  # each node counted once
    assert again.stats.variance_bound == pytest.approx(shared_variance(d.design.variance_bound, again.design.removed, P))


def test_shared_bound_covers_at_every_check_and_stays_finite():
    """200 seeds, J = 100, p = 0.2, 30 checks (one more node verified before each, largest |c| first): every
    unverified node under its bound at every check at once in ≥ 1 − δ of the seeds, θ finite at all 30 checks,
    and θ falls as the large nodes are verified; the former rule (the whole bound at δ/(i(i+1)) per check) is
    infinite from check 9 on at δ = 0.05. The same with the subsets of large verified nodes left out."""
    c, est, presence = planted()
    delta, n = 0.05, 200
    fails = fails_drop = 0
    for seed in range(n):
        thetas, ok = run_checks(c, est, presence, seed, delta)
        fails += not ok
        assert all(math.isfinite(t) for t in thetas)
        assert thetas[-1] < 0.5 * thetas[0]
        if seed < 40:
            fails_drop += not run_checks(c, est, presence, seed, delta, drop=0.5, stop_on_failure=True)[1]
    assert fails <= allowed_failures(n, delta)
    assert fails_drop <= allowed_failures(40, delta)
    old, _ = run_checks(c, est, presence, 0, delta, shared=False)
    assert all(math.isfinite(t) for t in old[:8]) and all(math.isinf(t) for t in old[8:])


@pytest.mark.parametrize("broken", ["no-slack", "no-pq"])
def test_a_broken_shared_bound_fails_the_same_test(broken):
    """Without Maurer's slack on V̄, or subtracting Σ q² r₀² without its p (1 − p), the same test fails far
    beyond the tolerance (on 100 seeds): the test can tell a valid shared bound from an invalid one."""
    c, est, presence = planted()
    delta, n = 0.05, 100
    fails = sum(not run_checks(c, est, presence, seed, delta, broken=broken, stop_on_failure=True)[1]
                for seed in range(n))
    assert fails > 3 * allowed_failures(n, delta)


def test_levels_sum_to_delta_and_the_rule_checks_its_samples():
    """δ accounting: the variance bounds (draw + refreshes at checks 2, 4, 8, ...) and the per-check unions over
    the nodes together spend at most δ; check 1's statement is at δ/2 like the former rule's."""
    rule = ThetaBelow(relative=0.1, samples=100, p=0.2, delta=0.05)
    variance = sum(v for i in range(1, 10**5) if (v := rule.variance_level(i)) is not None)
    nodes = sum(spent_delta(0.05 / 2, i) for i in range(1, 10**5))
    assert variance <= 0.05 / 2 and variance + nodes < 0.05
    assert rule.level(1) == pytest.approx(0.05 / 2) and rule.level(2) == pytest.approx(0.05 / 4 + 0.05 / 12 + 0.05 / 12)
    assert ThetaBelow(relative=0.1, samples=100, p=0.2, refresh=False).level(5) == pytest.approx(0.05 / 2 + 0.05 / 60)
    assert ThetaBelow(relative=0.1, samples=100, p=0.2, shared=False).level(3) == pytest.approx(0.05 / 12)
    c, est, presence = planted()
    shared = drawn(c, est, presence, 0).share_variance(0.0125, delta=0.025).stats
    for delta in (0.02, 0.025, 0.1):  # prob_exceeds inverts θ; below the variance's δ only the energy cap is left
        assert shared.prob_exceeds(shared.theta(delta)) == pytest.approx(delta, rel=1e-4)
    assert math.isfinite(shared.theta(0.0125)) and shared.prob_exceeds(1e9) == pytest.approx(0.0125)
    with pytest.raises(ValueError, match="too few"):
        ThetaBelow(relative=0.1, samples=40, p=0.2, bound="subgaussian")
    with pytest.raises(ValueError, match="before re-bounding"):
        c, est, presence = planted()
        d = drawn(c, est, presence, 0)
        d.rebound((d.nodes.take(torch.arange(2)), c[:2])).share_variance(0.025)
