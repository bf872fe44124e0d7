"""The diagnostic planner (atpstar.diagnostics.plan): its predicted θ against the bound realised on simulated
additive residuals, its choice of design against the realised best, and its cost model against the cached
SmolLM2 measurements. No model: the bound's statistics on simulated subsets (diagnostics/bound.py)."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from atpstar.diagnostics import Plan, plan
from atpstar.diagnostics.bound import SubsetSums, node_stats, spent_delta, variance_bound
from atpstar.diagnostics.planner import CAPTURE, SUBSET_COST, expected_theta

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
N = 2000


def profiles():
    """Residual profiles (spread, one dominant, sparse), each without and with estimates subtracted."""
    rng = np.random.default_rng(0)
    spread = torch.tensor(rng.normal(0, 1, N))
    dominant = torch.tensor(rng.normal(0, 0.05, N))
    dominant[0] = 5.0
    sparse = torch.zeros(N, dtype=torch.float64)
    sparse[:20] = torch.tensor(rng.normal(0, 2, 20))
    for name, r in (("spread", spread), ("dominant", dominant), ("sparse", sparse)):
        yield name, r, torch.zeros(N, dtype=torch.float64)
        yield name + "+estimates", r, torch.tensor(rng.normal(0, 3, N))


def realised(r, estimate, samples, p, delta=0.05, bound="capped", seed=0, check=None):
    """θ of the bound on additive subsets y_j = Σ X_jn r(n): one diagnostic at δ, or the stop rule's
    check ``check`` (a variance bound at δ/4 shared, δ/(2 i (i + 1)) for the units)."""
    gen = torch.Generator().manual_seed(seed)
    members = torch.rand(samples, len(r), generator=gen) < p
    sums = SubsetSums(len(r))
    sums.add(members, members.double() @ r)
    if check is None:
        return node_stats(sums, p, estimate, bound).theta(delta)
    d_var = spent_delta(delta / 2, 1)
    stats = node_stats(sums, p, estimate, bound)
    shared = node_stats(sums, p, estimate, bound, variance_bound=variance_bound(stats.variance, d_var, samples, p),
                        variance_delta=d_var)
    return shared.theta(d_var + spent_delta(delta / 2, check))


@pytest.mark.parametrize("bound", ["subgaussian", "capped"])
def test_predicted_theta_is_within_a_factor_of_the_realised_one(bound):
    """Predicted θ (from R = √Σr² and the largest |c|) against the realised θ: 3 residual profiles × with or
    without estimates × 4 designs × 10 seeds; every realised/predicted ratio within [0.5, 1.6] (measured
    0.57–1.45 over 20 seeds and 5 designs), and the median within [0.7, 1.2]."""
    ratios = []
    for name, r, estimate in profiles():
        residual, largest = float(r.norm()), float((estimate + r).abs().max())
        for samples, p in ((100, 0.2), (300, 0.1), (300, 0.05), (1000, 0.02)):
            predicted = expected_theta(N, samples, p, 0.05, residual, largest, bound)
            for seed in range(10):
                ratio = realised(r, estimate, samples, p, bound=bound, seed=seed) / predicted
                assert 0.5 <= ratio <= 1.6, (name, samples, p, seed, ratio)
                ratios.append(ratio)
    assert 0.7 <= float(np.median(ratios)) <= 1.2


def test_predicted_theta_of_the_stop_rule_checks():
    """The stop rule's check i (shared variance bound): the prediction follows the realised θ as i grows."""
    for name, r, estimate in profiles():
        residual, largest = float(r.norm()), float((estimate + r).abs().max())
        for check in (1, 10):
            predicted = expected_theta(N, 300, 0.1, 0.05, residual, largest, "capped", check=check)
            for seed in range(5):
                ratio = realised(r, estimate, 300, 0.1, seed=seed, check=check) / predicted
                assert 0.5 <= ratio <= 1.6, (name, check, seed, ratio)


def test_the_plan_picks_the_design_of_least_realised_theta():
    """At a budget of 302 forward-pass equivalents per pair (300 subsets) and no additivity cap, the planned p
    realises a median θ within 10% of the best p of the grid (medians over 10 seeds, spread residuals)."""
    rng = np.random.default_rng(1)
    r = torch.tensor(rng.normal(0, 1, N))
    zero = torch.zeros(N, dtype=torch.float64)
    chosen = plan(N, 302, residual=float(r.norm()), max_subset=N)
    assert chosen.samples == 300 and chosen.cost_per_pair == pytest.approx(302)
    grid = (0.5, 0.3, 0.2, 0.1, 0.05, 0.02)
    median = {p: float(np.median([realised(r, zero, 300, p, seed=s) for s in range(10)])) for p in grid}
    assert chosen.p in grid and median[chosen.p] <= 1.10 * min(median.values()), (chosen.p, median)
    assert chosen.expected_theta == pytest.approx(median[chosen.p], rel=0.25)


def test_the_additivity_cap_and_the_budget_set_the_design():
    capped = plan(11_360, 302)  # SmolLM2 IOI's attention nodes at the stop rule's former default cost
    assert capped.p == 0.1 and capped.samples == 300 and capped.expected_theta is None
    assert capped.p * 11_360 <= 1200
    small = plan(11_360, 302, max_subset=600)
    assert small.p * 11_360 <= 600 and small.p < capped.p and small.theta_per_residual > capped.theta_per_residual
    richer = plan(11_360, 1002)
    assert richer.theta_per_residual < capped.theta_per_residual  # more subsets, a narrower bound


def test_the_explanation_says_whether_theta_rules_out_the_verified_effects():
    useless = plan(11_360, 122, residual=3.0, largest_verified=2.81)
    assert isinstance(useless, Plan) and useless.expected_theta > 2.81
    assert "it does not" in useless.explanation and "R <" in useless.explanation
    useful = plan(11_360, 1002, residual=0.3, largest_verified=2.81)
    assert useful.expected_theta < 2.81 and "(it does)" in useful.explanation


def test_the_cost_model_matches_the_cached_measurements():
    """2 capture passes + J × 1.0 per subset is an upper bound within 17% of every measured diagnostic
    (SmolLM2: diagnostic_theta.csv's 9 designs; diagnostic_smollm.csv's per-subset cost at p = 0.02)."""
    theta = pd.read_csv(RESULTS / "diagnostic_theta.csv").drop_duplicates(["task", "p", "J"])
    assert len(theta) == 9
    for row in theta.itertuples():
        model = CAPTURE + row.J * SUBSET_COST
        assert row.fwd_per_pair_diag <= model + 1e-9 and model <= 1.17 * row.fwd_per_pair_diag, row
    smollm = pd.read_csv(RESULTS / "diagnostic_smollm.csv")["forward_per_subset"].dropna()
    assert len(smollm) and ((smollm <= SUBSET_COST) & (smollm >= 0.85 * SUBSET_COST)).all()


@pytest.mark.parametrize("kwargs, match", [
    ({"n_units": 0, "budget": 100}, "n_units must be a positive integer"),
    ({"n_units": 100, "budget": -1}, "budget must be positive"),
    ({"n_units": 100, "budget": 100, "delta": 1.5}, "delta must be a probability"),
    ({"n_units": 100, "budget": 100, "bound": "normal"}, "finite-sample bounds"),
    ({"n_units": 10_000, "budget": 20}, r"too few for a finite capped bound over 10000 units .* give at least \d+"),
])
def test_bad_plans_name_the_culprit(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan(**kwargs)


def test_the_smallest_budget_in_the_message_suffices():
    with pytest.raises(ValueError) as err:
        plan(10_000, 20)
    need = float(str(err.value).split("give at least ")[1].split(",")[0])
    assert math.isfinite(need) and plan(10_000, need).samples >= 2
