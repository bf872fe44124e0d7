"""The result of :func:`atpstar.diagnose`: the bound θ, the suspects and a plain-words statement."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import pandas as pd
import torch
from torch import Tensor

from .bound import NodeStats, memberships, rebound_stats, shared_variance, variance_bound
from ..cost import Cost
from ..nodes import NodeSet
from ..types import ALL_KINDS

SUSPECTS = 20
MEMBERS_CACHE = 1 << 26
"""Largest J × N₀ whose memberships a design keeps in memory for its re-bounds (64 MB of bools)."""


@dataclass
class Design:
    """The patched subsets of one diagnostic, kept for :meth:`Diagnosis.rebound`."""

    nodes: NodeSet
    """The nodes the subsets were drawn from (N₀), in membership column order."""
    estimate: Tensor
    """(N₀,) ê(n), replaced by the exact effect for nodes verified since."""
    presence: Tensor
    """(N₀,) q_n: fraction of the pairs that have the node's position."""
    subset_mean: Tensor
    """(J,) each subset's joint effect, mean over the pairs."""
    verified: Tensor
    """(N₀,) bool: verified since the subsets were drawn."""
    variance_bound: float | None = None
    """V̄: upper confidence bound on the variance of the subsets' values *now* (after the verifications so
    far), shared by every re-bound (:meth:`Diagnosis.share_variance`; None: each bound makes its own)."""
    variance_delta: float = 0.0
    """δ spent on ``variance_bound`` (the draw's and every refresh's together: it needs all their events)."""
    removed: float = 0.0
    """Σ q² r₀² over the nodes verified since the draw (r₀ = exact effect − the estimate subtracted at the draw)."""
    members: Tensor | None = dataclasses.field(default=None, repr=False, compare=False)
    """(J, N₀) bool memberships, kept after the first re-bound when small (``MEMBERS_CACHE``), else regenerated."""


def _node_key(s: NodeSet) -> Tensor:
    return ((s.kind.long() * 4096 + s.layer) * 65536 + s.unit) * 65536 + s.pos


def _edge_key(s) -> Tensor:
    return (s.writer.long() * 65536 + s.reader) * 65536 + s.pos


def _match(universe, nodes, key=_node_key) -> tuple[Tensor, Tensor]:
    """(hit, where): ``universe[i]`` is ``nodes[where[i]]`` when ``hit[i]`` (units compared by ``key``)."""
    a, b = key(universe), key(nodes)
    order = torch.argsort(b)
    pos = torch.searchsorted(b[order], a).clamp(max=max(len(b) - 1, 0))
    hit = (b[order][pos] == a) if len(b) else torch.zeros(len(a), dtype=torch.bool)
    return hit, order[pos] if len(b) else pos


@dataclass
class Diagnosis:
    """How large an unverified node's mean effect |c(n)| can still be."""

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
    design: "Design | None" = None
    """What :meth:`rebound` needs: the nodes the subsets were drawn from, their estimates and presence."""
    rebounds: int = 0
    """How many times these subsets were re-bounded after further verification (no new patch)."""

    def rebound(self, verified, delta: float | None = None, bound: str | None = None,
                drop_above: float | None = None) -> "Diagnosis":
        """The bound on the nodes still unverified after verifying more, from the **same subsets**: no
        new forward pass (docs/diagnostic.md §5).

        ``verified``: a Verification (its ``nodes`` and exact ``effect``), or ``(NodeSet, effects)``.
        Verified nodes among the sampled ones get their exact effect as estimate (residual 0) and leave
        the bound. Rigorous when they were chosen independently of these subsets, e.g. the next nodes of
        the ranking: the remaining columns are then a design of their own. Choosing them *from* this
        diagnostic's suspects is not covered (verify the suspects, then draw new subsets).

        ``drop_above``: leave out every subset that holds a node verified since with exact |effect| ≥ this
        (its interactions with the other members stay in the subset's effect when only its own effect is
        subtracted); must not depend on these subsets (e.g. a fraction of the largest verified effect)."""
        if self.design is None:
            raise ValueError("this Diagnosis keeps no design (made by an older version or from a checkpoint summary)")
        nodes, effect = (verified.nodes, verified.effect) if hasattr(verified, "nodes") else verified
        d = self.design
        if d.members is None and len(d.subset_mean) * len(d.nodes) <= MEMBERS_CACHE:  # a cache, shared by copies
            d.members = memberships(len(d.nodes), self.p, self.seed, 0, len(d.subset_mean))
        hit, where = self._match(d.nodes, nodes)
        estimate, done = d.estimate.clone(), d.verified.clone()
        estimate[hit] = torch.as_tensor(effect, dtype=torch.float64)[where[hit]].nan_to_num()
        new = hit & ~d.verified  # r₀ = c − ê₀ of the nodes verified now (ê₀: still their estimate at the draw)
        lost = float(((estimate - d.estimate)[new] * d.presence[new]).pow(2).sum())
        done |= hit
        shared = None if d.variance_bound is None else shared_variance(d.variance_bound, lost, self.p)
        design = dataclasses.replace(d, estimate=estimate, verified=done, removed=d.removed + lost,
                                     variance_bound=shared)
        keep = ~done
        bound = bound or self.bound
        avoid = None if drop_above is None else done & (estimate.abs() >= drop_above)
        stats = None
        if keep.any():
            scale = 1 / d.presence
            stats = rebound_stats(d.subset_mean, estimate * d.presence, keep, self.p, self.seed, estimate=estimate,
                                  bound=bound, scale=scale, avoid=avoid, variance_bound=shared,
                                  variance_delta=d.variance_delta, members=d.members)
        newly = int(done.sum() - d.verified.sum())
        return dataclasses.replace(
            self, delta=self.delta if delta is None else delta, bound=bound, nodes=d.nodes.take(keep), stats=stats,
            samples=self.samples if stats is None else stats.samples,
            n_unverified=self.n_unverified - newly, n_verified=self.n_verified + newly, design=design,
            rebounds=self.rebounds + 1)

    @staticmethod
    def _match(universe, units) -> tuple[Tensor, Tensor]:
        return _match(universe, units)

    def share_variance(self, delta_var: float, delta: float | None = None) -> "Diagnosis":
        """This diagnosis with one variance bound V̄₀ (level ``delta_var``) made now, at the draw, and shared by
        every later :meth:`rebound` (docs/diagnostic.md §5): verifying a node lowers the subsets' variance by
        exactly p(1 − p) q² r₀², so V̄₀ minus that bounds it at every check, on one event. A bound at level δ
        then spends ``δ − delta_var`` on the union over the nodes only. ``delta``: the new level (default:
        unchanged). Call it on a fresh draw, before any re-bound."""
        if self.design is None or self.stats is None:
            raise ValueError("share_variance needs a drawn diagnosis with its design (and a moving node)")
        if self.rebounds or bool(self.design.verified.any()):
            raise ValueError("share the variance at the draw, before re-bounding (the bound is on the draw's variance)")
        v0 = variance_bound(self.stats.variance, delta_var, self.stats.samples, self.p)
        design = dataclasses.replace(self.design, variance_bound=v0, variance_delta=delta_var, removed=0.0)
        stats = dataclasses.replace(self.stats, variance_bound=v0, variance_delta=delta_var)
        return dataclasses.replace(self, design=design, stats=stats, delta=self.delta if delta is None else delta)

    def refresh_variance(self, delta_var: float, delta: float | None = None) -> "Diagnosis":
        """The shared variance bound tightened by a fresh one from these subsets' present values (level
        ``delta_var``, added to the δ spent on variance bounds): V̄ = min(carried, s² / (1 − g)). The carried
        bound keeps the draw's absolute slack; a fresh one scales with what is left. ``delta``: the new level
        (default: unchanged, so the union over the nodes gets ``delta_var`` less)."""
        if self.design is None or self.design.variance_bound is None or self.stats is None:
            raise ValueError("refresh_variance needs a diagnosis with a shared variance bound (share_variance)")
        fresh = variance_bound(self.stats.variance, delta_var, self.stats.samples, self.p)
        v, spent = min(self.design.variance_bound, fresh), self.design.variance_delta + delta_var
        return dataclasses.replace(self, design=dataclasses.replace(self.design, variance_bound=v, variance_delta=spent),
                                   stats=dataclasses.replace(self.stats, variance_bound=v, variance_delta=spent),
                                   delta=self.delta if delta is None else delta)

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

    UNIT = "node"
    """What the units are called in the statement ("node"; "edge" for :class:`EdgeDiagnosis`)."""

    def _units(self) -> str:
        """The unverified units in words, e.g. "attn, mlp nodes"."""
        return f"{', '.join(self.kinds)} {self.UNIT}s"

    @property
    def statement(self) -> str:
        """One paragraph: what was patched, how many samples, the bound, and the assumptions."""
        u = self.UNIT
        static = (f" ({self.n_static} further unverified {u}s never change between clean and noise prompts, so their "
                  "effect is exactly 0)") if self.n_static else ""
        if self.stats is None:
            return (f"None of the {self.n_unverified} unverified {self._units()} changes between the "
                    f"clean and noise prompts of the {self.n_pairs} pairs, so every unverified effect is exactly 0: "
                    "θ = 0, no assumption needed.")
        n, theta = len(self.nodes), self.theta
        top = self.suspects.iloc[0]
        subtract = (f", subtracting from each subset's effect the sum of its members' {self.estimates} estimates"
                    if self.estimates else "")
        kind = (f"finite-sample (sub-Gaussian tails of the random design and a variance bound, union bound over the "
                f"{u}s)" if self.bound == "subgaussian" else
                f"finite-sample (sub-Gaussian tails of the random design and a variance bound, union bound over the "
                f"{u}s, each {u}'s bound capped by the residual energy)" if self.bound == "capped" else
                "asymptotic (normal approximation with a Bonferroni correction; it may under-cover when a few "
                "large effects dominate and p is small)")
        bound = (f"θ = {theta:.4g}" if math.isfinite(theta) else
                 f"θ = inf ({self.stats.unobserved} {u}s were never or always included; raise samples or p)")
        c = "c(e)" if u == "edge" else "c(n)"
        return (
            f"Patched {self.samples} random subsets of the {n} unverified {self._units()}{static} jointly "
            f"on each of {self.n_pairs} prompt pairs, each {u} included with probability p = {self.p:g} (about "
            f"{self.p * n:.0f} {u}s per subset){subtract}; cost {self.cost.per_pair():.0f} forward-pass equivalents "
            f"per pair, {self.cost.seconds:.1f} s. With probability at least {1 - self.delta:g}, no unverified {u} "
            f"has a mean effect |{c}| larger than {bound}; the top suspect is {top['name']} (estimated effect "
            f"{top['effect']:.3g} ± {top['se']:.2g}). The bound is {kind}, and it assumes that effects add up "
            f"within a subset of about {self.p * n:.0f} {u}s: I(S) = sum of {c} over {c[2]} in S. Interactions break "
            f"it: {u}s that saturate, cancel or amplify one another in the same subset make the included-minus-"
            f"excluded statistic measure {'an' if u[0] in 'aeiou' else 'a'} {u}'s average effect alongside a random {self.p:g}-fraction of the others "
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
            "variance_bound": None if self.stats is None else self.stats.variance_bound, "rebounds": self.rebounds,
            "unobserved": 0 if self.stats is None else self.stats.unobserved, "resumed": self.resumed,
            "statement": self.statement, "suspects": json.loads(self.suspects.to_json(orient="records")),
            "cost": self.cost.to_dict(), "cost_per_pair": self.cost.per_pair(),
        }

    def __repr__(self) -> str:
        return (f"Diagnosis(theta={self.theta:.4g} at delta={self.delta:g}, {len(self.nodes)} unverified nodes, "
                f"{self.samples} subsets, p={self.p:g}, {self.bound})")


@dataclass(repr=False)
class EdgeDiagnosis(Diagnosis):
    """How large an unverified edge's mean effect |c(e)| can still be: a
    :class:`Diagnosis` whose units are edges (``nodes`` holds the sampled :class:`~atpstar.edges.EdgeSet`)."""

    graph: object = None
    """The :class:`~atpstar.edges.EdgeGraph` the edges index."""

    UNIT = "edge"

    def _units(self) -> str:
        return f"edges into {', '.join(self.kinds)} readers"

    @staticmethod
    def _match(universe, units) -> tuple[Tensor, Tensor]:
        return _match(universe, units, _edge_key)

    def table(self, k: int | None = None) -> pd.DataFrame:
        """Top ``k`` unverified edges (all: None) by their estimated |c(e)|. Columns: the edge columns of
        :meth:`atpstar.edges.EdgeScores.to_frame` (name, writer, reader, pos, writer_/reader_ layer, kind,
        unit; ``score`` = |ĉ|, ``effect`` = ĉ), then estimate, diff, se, z, upper, included as for nodes."""
        from ..edges.scores import COLUMNS, edge_frame

        extra = ["estimate", "diff", "se", "z", "upper", "included"]
        if self.stats is None:
            return pd.DataFrame(columns=[*COLUMNS, *extra])
        s = self.stats
        order = torch.argsort(s.effect.abs().nan_to_num(-1.0), descending=True, stable=True)[:k]
        frame = edge_frame(self.graph, self.nodes.take(order), s.effect[order].abs(), s.effect[order])
        for name, values in (("estimate", (s.effect - s.diff)[order]), ("diff", s.diff[order]), ("se", s.se[order]),
                             ("z", s.z[order]), ("upper", s.upper(self.delta)[order]), ("included", s.count[order])):
            frame[name] = values.numpy()
        return frame

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update(units="edges", sampled_edges=out.pop("sampled_nodes"), readers=out.pop("kinds"))
        return out

    def __repr__(self) -> str:
        return (f"EdgeDiagnosis(theta={self.theta:.4g} at delta={self.delta:g}, {len(self.nodes)} unverified edges, "
                f"{self.samples} subsets, p={self.p:g}, {self.bound})")
