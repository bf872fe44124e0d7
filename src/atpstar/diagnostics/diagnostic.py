"""The false-negative diagnostic: how large can an unverified node's effect still be?

After verifying the top of a ranking, :func:`diagnose` patches random subsets of the *unverified*
nodes jointly (each node in a subset independently with probability ``p``; one
:class:`~atpstar.substrate.joint.JointPatcher` row per subset and pair), optionally subtracts each subset's
predicted effect (the sum of its members' estimates, e.g. AtP*), and turns the per-node
included-minus-excluded statistics (:mod:`atpstar.diagnostics.bound`) into the statement "with probability
≥ 1 − δ no unverified node has |c(n)| > θ". The mathematics, its assumptions (effects add up
within a subset) and what happens when they fail are in docs/diagnostic.md.

Unverified nodes whose noise value equals their clean value on every pair (e.g. positions before
the first token where clean and noise differ) have effect exactly 0: they are left out of the
subsets and of the union bound (``static``). Memberships are drawn per subset from ``(seed, j)``,
so a run is reproducible and resumable: a checkpoint keeps the subsets' effects, and a rerun
regenerates the memberships and patches only the subsets still missing.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from .bound import memberships, subset_seed
from ..checkpoint import fingerprint, run_key
from .diagnosis import Diagnosis
from .edges import diagnose_edges
from .sampling import BOUND, P, SAMPLES, check_options, store_key
from .subsets import Side, bound_unverified
from ..substrate.joint import JointPatcher
from ..substrate.node_units import NodeUnits
from ..metrics import resolve
from ..nodes import KIND_INDEX, NodeSet
from ..pairs import check_pairs
from ..units import unit_of
from ..substrate.patching import moved
from ..types import NodeKind

__all__ = ["Diagnosis", "diagnose", "memberships", "subset_seed"]


def diagnose(model, pairs, verified, estimates=None, kinds=None, samples: int = SAMPLES, p: float = P,
             delta: float = 0.05, seed: int = 0, metric=None, checkpoint=None, progress: bool = True,
             bound: str = BOUND, batch_size: int | None = None, memory_mb: float = 1024,
             checkpoint_every: float = 30.0, edges=None, graph=None):
    """Bound the effects that verification may have missed.

    Args:
        model, pairs, metric: as for :func:`atpstar.acp`.
        verified: a :class:`~atpstar.verification.Verification` (its ``ranking`` is the universe of nodes,
            its ``nodes`` the verified ones; it must belong to this model, these pairs and this
            metric), or the verified nodes themselves (names, a node table, a NodeSet; None or
            empty: nothing verified), the universe then being every node of ``kinds``.
        estimates: optional :class:`~atpstar.scores.Scores` (e.g. AtP*): each subset's predicted
            effect, the sum of its members' signed estimates, is subtracted (less variance).
        kinds: restrict the universe to these node kinds (default: all kinds of the ranking, or all).
        samples: random subsets J (each one patched forward per pair); the sub-Gaussian bound needs
            at least :func:`atpstar.diagnostics.bound.min_samples` (≈ 100–300 for usual p, δ).
        p: probability that a node is in a subset, in (0, 1); smaller p means smaller subsets (more
            nearly additive effects) but a wider sub-Gaussian bound.
        delta: the bound fails with probability at most δ, in (0, 1).
        seed: seed of the memberships (same seed, same subsets).
        checkpoint: a file path: the subsets' effects are kept there, and a rerun resumes.
        bound: ``"subgaussian"`` (finite-sample, rigorous under additivity) or ``"normal"``
            (asymptotic, tighter, may under-cover); see :mod:`atpstar.diagnostics.bound`.
        edges, graph: edges only — the units are edges when ``verified`` is a verification of edges,
            edges or edge names (or, with nothing verified, ``estimates`` is an EdgeScores): then
            :func:`~atpstar.diagnostics.edges.diagnose_edges` runs, ``edges`` restricting its universe.

    Returns:
        :class:`~atpstar.diagnostics.diagnosis.Diagnosis`: ``theta``, ``prob_exceeds(theta)``, ``suspects``,
        ``statement``, ``cost`` and ``to_dict()`` (an EdgeDiagnosis for edges).
    """
    if _unit(verified, estimates) == "edge":
        if kinds is not None:
            raise ValueError("kinds= selects node kinds, but these units are edges: pass edges= (an EdgeSet, edge "
                             "names or an edge table) to restrict an edge diagnostic")
        return diagnose_edges(model, pairs, verified, estimates, edges, samples, p, delta, seed, metric, graph,
                              checkpoint, progress, bound, batch_size, memory_mb, checkpoint_every)
    if edges is not None or graph is not None:
        raise ValueError("edges= and graph= are for an edge diagnostic, but these units are nodes (a node "
                         "verification, node names or none with node estimates): drop them, or pass kinds=")
    start = time.perf_counter()
    check_options(samples, p, delta, bound)
    check_pairs(pairs)
    metric = resolve(metric, pairs)
    universe, done = _universe(model, pairs, verified, kinds, metric)
    side = Side("node", universe, done, ids=NodeUnits(model, pairs).ids,
                patcher=lambda left: JointPatcher(model, pairs, left.kinds, metric, batch_size, memory_mb),
                moving=lambda patcher, left: _moving(model, patcher, left),
                gather=lambda units: _gather(estimates, units, pairs.max_len),
                key=lambda units, p, seed: _key(model, pairs, units, metric, p, seed))
    found = bound_unverified(side, pairs, estimates, samples, p, delta, seed, checkpoint, progress, bound, memory_mb,
                             checkpoint_every, start)
    return Diagnosis(**found, kinds=[k.value for k in universe.kinds])


def _unit(verified, estimates) -> str:
    """The unit kind a diagnostic is about: that of what was verified, else of the estimates (nodes by default)."""
    nothing = verified is None or (hasattr(verified, "__len__") and len(verified) == 0 and not hasattr(verified, "unit"))
    return unit_of(estimates) if nothing and estimates is not None else "node" if nothing else unit_of(verified)


def _universe(model, pairs, verified, kinds, metric) -> tuple[NodeSet, NodeSet]:
    """(every node the bound is about, the verified ones)."""
    n_pos = pairs.max_len
    if hasattr(verified, "ranking") and hasattr(verified, "key"):  # a Verification
        if verified.key != run_key(model, pairs, metric):
            raise ValueError("the verification belongs to a different run (another model, prompt pairs or metric): "
                             "diagnose with the model, pairs and metric it was verified on")
        universe, done = verified.ranking, verified.nodes
        universe.check(model, n_pos)
    else:
        universe = NodeSet.every(model, "all" if kinds is None else kinds, n_pos)
        empty = verified is None or (hasattr(verified, "__len__") and len(verified) == 0)
        done = universe.take(slice(0, 0)) if empty else NodeSet.parse(model, verified, n_pos)
    if kinds is not None:
        wanted = torch.tensor([KIND_INDEX[k] for k in NodeKind.parse(kinds)])
        universe = universe.take(torch.isin(universe.kind, wanted))
    return universe, done


def _moving(model, patcher: JointPatcher, nodes: NodeSet) -> Tensor:
    """(N,) bool: the node's noise value differs from its clean value on at least one pair."""
    out = torch.zeros(len(nodes), dtype=torch.bool)
    for runs in patcher.groups:
        own_pos = nodes.pos - runs.group.offset
        idx = (own_pos >= 0).nonzero().flatten()
        n_group = len(runs.group.index)
        jobs = moved(model, runs, nodes, own_pos, idx.repeat(n_group), torch.arange(n_group).repeat_interleave(len(idx)))
        out[idx] |= jobs.view(n_group, len(idx)).any(0)
    return out


def _gather(estimates, nodes: NodeSet, n_pos: int) -> Tensor:
    """(N,) signed mean estimate of each node from a Scores (0 for kinds or nodes it lacks)."""
    if not hasattr(estimates, "effect") or not isinstance(estimates.effect, dict):
        hint = " (edge estimates: an edge verification or edges to bound go with them)" if unit_of(estimates) == "edge" else ""
        raise TypeError(f"estimates must be a Scores (e.g. atpstar.atp(...)), got {type(estimates).__name__}{hint}")
    out = torch.zeros(len(nodes), dtype=torch.float64)
    for kind, table in estimates.effect.items():
        sel = nodes.kind == KIND_INDEX[NodeKind(kind)]
        if not sel.any():
            continue
        if table.shape[-1] != n_pos or table.shape[0] <= int(nodes.layer[sel].max()):
            raise ValueError(f"estimates for {NodeKind(kind).value} nodes have shape {tuple(table.shape)}, which does "
                             f"not fit these prompts ({n_pos} positions): compute them on the same model and pairs")
        out[sel] = table[nodes.layer[sel], nodes.unit[sel], nodes.pos[sel]].double()
    return out.nan_to_num()


def _key(model, pairs, nodes: NodeSet, metric, p: float, seed: int) -> str:
    return store_key(fingerprint(model, pairs, nodes, metric), p, seed)
