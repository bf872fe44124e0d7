"""The diagnostic's body, written once for every unit kind: from the universe and the verified units to the
bound's statistics. What differs between nodes and edges (how the universe is read, which patcher patches
subsets jointly, which units never move, how estimates are read, the checkpoint's key) comes in a
:class:`Side`; :mod:`.diagnostic` (nodes) and :mod:`.edges` build theirs and turn the result into a
Diagnosis / EdgeDiagnosis."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from .. import distributed
from ..cost import Cost
from .bound import SubsetSums, node_stats
from .diagnosis import Design
from .sampling import Store, estimates_name, sample


@dataclass
class Side:
    """One unit kind's part in a diagnostic run."""

    unit: str
    """``"node"`` or ``"edge"`` (messages, the progress bar, the checkpoint's words)."""
    universe: object
    """Every unit the bound is about (a NodeSet, an EdgeSet)."""
    done: object
    """The verified units (left out)."""
    ids: Callable
    """units -> (N,) int64 ids, unique within the run."""
    patcher: Callable
    """unverified units -> a joint patcher (``effects(units, members)``, ``stats``)."""
    moving: Callable
    """patcher, units -> (N,) bool: the unit's noise value differs from its clean one on some pair."""
    gather: Callable
    """units -> (N,) float64 signed estimate of each unit (only called with estimates)."""
    key: Callable
    """units, p, seed -> the checkpoint's key."""
    scope: str = ""
    """Words after the universe's size in the "nothing left" error (e.g. ``" in the universe"``)."""


def bound_unverified(side: Side, pairs, estimates, samples: int, p: float, delta: float, seed: int, checkpoint,
                     progress: bool, bound: str, memory_mb: float, checkpoint_every: float, start: float) -> dict:
    """Patch random subsets of the unverified units that move and bound their effects: the fields every
    diagnosis has (``start``: when the call began, for its cost)."""
    universe = side.universe
    left = universe.take(~torch.isin(side.ids(universe), side.ids(side.done)))
    if len(left) == 0:
        raise ValueError(f"no unverified {side.unit} is left ({len(universe)} {side.unit}s{side.scope}, all verified): "
                         "nothing to bound")
    patcher = side.patcher(left)
    live = side.moving(patcher, left)
    units = left.take(live)
    presence = pairs.presence(units.pos)
    estimate = None if estimates is None else side.gather(units)
    sums = SubsetSums(len(units))
    effects, resumed = torch.zeros(0, len(pairs), dtype=torch.float64), 0
    if len(units):
        store = Store(distributed.rank_path(checkpoint), side.key(units, p, seed), checkpoint_every, unit=side.unit)
        resumed = min(len(store.effects), samples)
        effects = sample(patcher, units, sums, store, estimate, presence, samples, p, seed, memory_mb, progress,
                         unit=side.unit)
    stats = node_stats(sums, p, estimate, bound, scale=1 / presence) if len(units) else None
    design = Design(units, torch.zeros(len(units), dtype=torch.float64) if estimate is None else estimate.clone(),
                    presence, effects.mean(1) if len(units) else effects.new_zeros(0),
                    torch.zeros(len(units), dtype=torch.bool))
    cost = Cost(forward=patcher.stats["forward_equivalents"], pairs=len(pairs), seconds=time.perf_counter() - start)
    return dict(delta=delta, p=p, samples=samples, bound=bound, nodes=units, stats=stats, n_unverified=len(left),
                n_static=int((~live).sum()), n_verified=len(universe) - len(left), estimates=estimates_name(estimates),
                subset_effects=effects, n_pairs=len(pairs), cost=cost, resumed=resumed, seed=seed, design=design)
