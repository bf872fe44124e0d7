"""The command line's diagnostic design (atpstar.diagnostics.defaults.design): one bound and one set of
defaults for --diagnose and --stop theta, the user's --samples / --p honoured, bad input named."""

import pytest

from atpstar.diagnostics.defaults import BOUND, BUDGET, design
from atpstar.diagnostics.planner import plan, width


def test_defaults_are_the_planners_choice_at_the_default_budget():
    """Neither --samples nor --p: the plan of the default budget (300 subsets), p = 0.1 for ~10⁴ nodes,
    the capped bound, for the diagnostic and the stop rule alike."""
    once, stop = design(11320), design(11320, stop=True)
    assert (once.samples, once.p, once.bound) == (stop.samples, stop.p, stop.bound) == (300, 0.1, BOUND)
    assert once == plan(11320, BUDGET, bound="capped")
    assert once.cost_per_pair == BUDGET == 302
    # the stop rule spends δ over its checks, so its first check is a little wider, never narrower
    assert stop.theta_per_residual == pytest.approx(width(11320, 300, 0.1, 0.05, check=1))
    assert 1.0 < stop.theta_per_residual / once.theta_per_residual < 1.2


def test_the_users_samples_and_p_are_kept():
    assert (design(11320, samples=1000).samples, design(11320, samples=1000).p) == (1000, 0.1)
    both = design(11320, samples=120, p=0.2)
    assert (both.samples, both.p, both.cost_per_pair) == (120, 0.2, 122)
    assert both.theta_per_residual == pytest.approx(width(11320, 120, 0.2, 0.05))
    # p alone: the budget's 300 subsets give no finite bound at p = 0.02, so the subsets double until they do
    small = design(11320, p=0.02)
    assert (small.p, small.samples) == (0.02, 600)
    with pytest.raises(ValueError):
        plan(11320, 302, grid=(0.02,), max_subset=float("inf"))


def test_edges_pay_four_capture_passes():
    assert design(20000, unit="edge").cost_per_pair == 304
    assert design(20000, unit="edge", samples=600, p=0.05).cost_per_pair == 604


@pytest.mark.parametrize("kwargs, culprit", [
    (dict(samples=1), "--samples must be an integer of at least 2"),
    (dict(samples=2.5), "--samples must be an integer"),
    (dict(p=0.0), "--p must be in \\(0, 1\\)"),
    (dict(p=1.5), "--p must be in \\(0, 1\\)"),
    (dict(unit="head"), "unit must be 'node' or 'edge'"),
    (dict(samples=10, p=0.001), "--samples 10 and --p 0.001 cannot bound 11320 unverified nodes: raise --samples"),
])
def test_bad_designs_are_refused_naming_the_option(kwargs, culprit):
    with pytest.raises(ValueError, match=culprit):
        design(11320, **kwargs)
