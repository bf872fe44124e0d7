"""The θ warning (diagnostics/usefulness.py) and the suspects' evidence labels (diagnostics/evidence.py)."""

import math

import numpy as np
import pandas as pd
import pytest

from atpstar.diagnostics.evidence import LABELS, label_suspects
from atpstar.diagnostics.usefulness import theta_warning


def test_node_warning_when_theta_rules_out_nothing_verified():
    """θ against the largest verified |effect| (4.75 against 2.81: the shape of the demo's numbers)."""
    note = theta_warning(4.752, np.array([2.81, -1.2, 0.4]))
    assert note.startswith("the node diagnostic's θ = 4.752 is not below the largest verified |effect| (2.81)")
    assert "rules out no node as large as those verified" in note and "--samples" in note
    assert theta_warning(2.0, [2.81, -1.2]) is None  # below: it rules something out
    assert theta_warning(2.81, [-2.81]) is not None  # equal counts as not below
    assert theta_warning(math.inf, [0.5]) is not None
    assert theta_warning(4.0, []) is None and theta_warning(4.0, None) is None
    assert theta_warning(3.0, pd.DataFrame({"effect": [0.3, -2.0]})) is not None
    assert theta_warning(1.0, pd.DataFrame({"effect": [0.3, -2.0]})) is None


def test_edge_warning_says_what_to_change_for_the_universe_bounded():
    """Edges read the verified table's exact effects; over every edge the advice is to bound a part of the
    graph, over a part already a smaller one; below the largest verified effect there is no warning."""
    verified = pd.DataFrame({"effect_exact": [6.05, -1.0], "effect": [9.0, 0.0]})
    for theta, universe in ((34.27, None), (34.27, "all"), (math.inf, None)):
        note = theta_warning(theta, verified, "edge", universe)
        assert note.startswith(f"the edge diagnostic's θ = {theta:.4g} is not below the largest verified |effect| (6.05)")
        assert "rules out no edge as large as those verified" in note and "--edge-universe top:M or readers:N" in note
    assert "choose a smaller --edge-universe" in theta_warning(6.05, verified, "edge", "top:20000")
    assert theta_warning(3.95, verified, "edge", "readers:6") is None
    assert theta_warning(math.inf, verified.head(0), "edge") is None  # nothing verified: nothing to compare


def test_warning_rejects_an_unknown_unit():
    with pytest.raises(ValueError, match="unit must be 'node' or 'edge'"):
        theta_warning(1.0, [1.0], unit="neuron")


def suspects(**columns) -> pd.DataFrame:
    return pd.DataFrame({"name": [f"n{i}" for i in range(len(columns["effect"]))], **columns})


def test_labels_follow_the_evidence():
    table = suspects(effect=[3.0, -1.5, 0.5, 0.8, 2.0], se=[0.2, 0.5, 0.5, np.inf, 0.0],
                     included=[30, 30, 30, 0, 30])
    out = label_suspects(table, width=[2.0, 2.5, 2.5, np.inf, 0.0])
    assert list(out["evidence"]) == ["strong", "moderate", "weak", "none", "strong"]
    assert out["lower"].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 2.0])
    assert set(out["evidence"]) <= set(LABELS) and list(out.columns[:4]) == ["name", "effect", "se", "included"]


def test_labels_on_simulated_subsets_separate_planted_effects_from_zero():
    """Additive subsets with two planted effects among 400 zero ones: the planted units are labelled strong,
    and no zero-effect unit is (the simultaneous interval holds 0 for all of them) in 20 of 20 seeds."""
    import torch

    from atpstar.diagnostics.bound import SubsetSums, node_stats

    c = torch.zeros(400, dtype=torch.float64)
    c[:2] = torch.tensor([4.0, -3.0])
    c[2:] = torch.tensor(np.random.default_rng(0).normal(0, 0.02, 398))
    for seed in range(20):
        members = torch.rand(600, 400, generator=torch.Generator().manual_seed(seed)) < 0.1
        sums = SubsetSums(400)
        sums.add(members, members.double() @ c)
        stats = node_stats(sums, 0.1)
        table = suspects(effect=stats.effect.numpy(), se=stats.se.numpy(), included=stats.count.numpy())
        out = label_suspects(table, stats.multiplier(0.05) * stats.se.numpy())
        assert list(out["evidence"][:2]) == ["strong", "strong"], seed
        assert (out["evidence"][2:] != "strong").all(), seed
        assert (out["lower"][:2].to_numpy() <= np.abs(c[:2].numpy()) + 1e-9).all()


def test_labels_name_a_missing_column():
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['included'\]"):
        label_suspects(pd.DataFrame({"effect": [1.0], "se": [0.1]}), 0.5)
    with pytest.raises(ValueError, match="width must be non-negative"):
        label_suspects(suspects(effect=[1.0], se=[0.1], included=[3]), -1.0)
