"""The result of :func:`atpstar.diagnose`: the bound θ, the suspects and a plain-words statement."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from .bound import NodeStats
from ..cost import Cost
from ..nodes import NodeSet
from ..types import ALL_KINDS

SUSPECTS = 20


@dataclass
class Diagnosis:
    """How large an unverified node's mean effect |c(n)| can still be (SPEC.md §9)."""

    delta: float
    """The bound may fail with probability at most δ."""
    p: float
    """Probability that a node was in a subset."""
    samples: int
    """Random subsets patched (J)."""
    bound: str
    """"subgaussian" (finite-sample) or "normal" (asymptotic)."""
    nodes: NodeSet
    """The unverified nodes the subsets were drawn from (static ones excluded)."""
    stats: NodeStats | None
    """Per-node statistics (None when no unverified node moves: every effect is exactly 0)."""
    n_unverified: int
    """Unverified nodes, static ones included."""
    n_static: int
    """Unverified nodes whose noise value equals their clean value on every pair: effect exactly 0."""
    n_verified: int
    estimates: str | None
    """Name of the estimates subtracted from each subset's effect (None: none)."""
    subset_effects: Tensor
    """(J, pairs) float64 joint-patch effect of each subset on each pair."""
    kinds: list
    n_pairs: int
    cost: Cost
    """Work of this call: 2 capture passes per pair plus every patched subset (forward-pass equivalents)."""
    resumed: int = 0
    """Subsets reloaded from the checkpoint instead of patched."""
    seed: int = 0

    @property
    def theta(self) -> float:
        """Smallest θ such that, with probability ≥ 1 − δ, no unverified node has |c(n)| > θ."""
        return self.theta_at(self.delta)

    def theta_at(self, delta: float) -> float:
        """θ for another failure probability δ (same samples)."""
        return 0.0 if self.stats is None else self.stats.theta(delta)

    def prob_exceeds(self, theta: float) -> float:
        """Bound on the probability that some unverified node has |c(n)| > ``theta``: the smallest δ at
        which the diagnostic reaches it (1: it cannot exclude such a node)."""
        return 0.0 if self.stats is None else self.stats.prob_exceeds(theta)

    @property
    def suspects(self) -> pd.DataFrame:
        """The unverified nodes most likely to be large (largest estimated |c(n)| first): verify these next."""
        return self.table(SUSPECTS)

    def table(self, k: int | None = None) -> pd.DataFrame:
        """Top ``k`` unverified nodes (all: None) by their estimated |c(n)| = |ĉ|. Columns: kind, layer,
        unit, pos, name, effect (ĉ: estimate + diff), estimate (ê, 0 without estimates), diff
        (included-minus-excluded, in effect units), se, z (= effect / se), upper (|ĉ| + f(δ)·se: with
        probability ≥ 1 − δ all nodes are below their upper bound at once), included (subsets with it)."""
        if self.stats is None:
            return pd.DataFrame(columns=["kind", "layer", "unit", "pos", "name", "effect", "estimate", "diff", "se", "z",
                                         "upper", "included"])
        s = self.stats
        upper = s.upper(self.delta)
        order = torch.argsort(s.effect.abs().nan_to_num(-1.0), descending=True, stable=True)[:k]
        nodes = self.nodes.take(order)
        kind = pd.Series([k.value for k in ALL_KINDS])[nodes.kind.numpy()].to_numpy()
        letter = pd.Series([k.unit_letter for k in ALL_KINDS])[nodes.kind.numpy()].to_numpy()
        layer, unit, pos = (pd.Series(t.numpy()) for t in (nodes.layer, nodes.unit, nodes.pos))
        name = "L" + layer.astype(str) + "." + kind + "." + letter + unit.astype(str) + "@" + pos.astype(str)
        return pd.DataFrame({
            "kind": kind, "layer": layer, "unit": unit, "pos": pos, "name": name, "effect": s.effect[order].numpy(),
            "estimate": (s.effect - s.diff)[order].numpy(), "diff": s.diff[order].numpy(), "se": s.se[order].numpy(),
            "z": s.z[order].numpy(), "upper": upper[order].numpy(), "included": s.count[order].numpy(),
        })

    @property
    def statement(self) -> str:
        """One paragraph: what was patched, how many samples, the bound, and the assumptions."""
        static = (f" ({self.n_static} further unverified nodes never change between clean and noise prompts, so their "
                  "effect is exactly 0)") if self.n_static else ""
        if self.stats is None:
            return (f"None of the {self.n_unverified} unverified nodes ({', '.join(self.kinds)}) changes between the "
                    f"clean and noise prompts of the {self.n_pairs} pairs, so every unverified effect is exactly 0: "
                    "θ = 0, no assumption needed.")
        n, theta = len(self.nodes), self.theta
        top = self.suspects.iloc[0]
        subtract = (f", subtracting from each subset's effect the sum of its members' {self.estimates} estimates"
                    if self.estimates else "")
        kind = ("finite-sample (sub-Gaussian tails of the random design and a variance bound, union bound over the "
                "nodes)" if self.bound == "subgaussian" else
                "asymptotic (normal approximation with a Bonferroni correction; it may under-cover when a few "
                "large effects dominate and p is small)")
        bound = (f"θ = {theta:.4g}" if math.isfinite(theta) else
                 f"θ = inf ({self.stats.unobserved} nodes were never or always included; raise samples or p)")
        return (
            f"Patched {self.samples} random subsets of the {n} unverified {', '.join(self.kinds)} nodes{static} jointly "
            f"on each of {self.n_pairs} prompt pairs, each node included with probability p = {self.p:g} (about "
            f"{self.p * n:.0f} nodes per subset){subtract}; cost {self.cost.per_pair():.0f} forward-pass equivalents "
            f"per pair, {self.cost.seconds:.1f} s. With probability at least {1 - self.delta:g}, no unverified node "
            f"has a mean effect |c(n)| larger than {bound}; the top suspect is {top['name']} (estimated effect "
            f"{top['effect']:.3g} ± {top['se']:.2g}). The bound is {kind}, and it assumes that effects add up "
            f"within a subset of about {self.p * n:.0f} nodes: I(S) = sum of c(n) over n in S. Interactions break "
            "it: nodes that saturate, cancel or amplify one another in the same subset make the included-minus-"
            f"excluded statistic measure a node's average effect alongside a random {self.p:g}-fraction of the others "
            "rather than its effect alone, and the variance bound no longer applies; a smaller p (smaller subsets) "
            "limits interactions, and verifying the top suspects checks them."
        )

    def to_dict(self) -> dict:
        """Plain values (JSON-ready): the bound, its settings, the suspects and the cost."""
        return {
            "theta": self.theta, "delta": self.delta, "p": self.p, "samples": self.samples, "bound": self.bound,
            "seed": self.seed, "kinds": list(self.kinds), "pairs": self.n_pairs, "unverified": self.n_unverified,
            "static": self.n_static, "sampled_nodes": len(self.nodes), "verified": self.n_verified,
            "estimates": self.estimates, "variance": None if self.stats is None else self.stats.variance,
            "unobserved": 0 if self.stats is None else self.stats.unobserved, "resumed": self.resumed,
            "statement": self.statement, "suspects": json.loads(self.suspects.to_json(orient="records")),
            "cost": self.cost.to_dict(), "cost_per_pair": self.cost.per_pair(),
        }

    def __repr__(self) -> str:
        return (f"Diagnosis(theta={self.theta:.4g} at delta={self.delta:g}, {len(self.nodes)} unverified nodes, "
                f"{self.samples} subsets, p={self.p:g}, {self.bound})")
