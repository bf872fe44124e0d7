"""Patching random subsets of units jointly, resumably: the loop shared by the node and edge diagnostics.

The loop only needs ``patcher.effects(units, members)`` — a (B, pairs) table of joint effects for a
(B, N) bool membership matrix — which both :class:`~atpstar.substrate.joint.JointPatcher` (nodes)
and :class:`~atpstar.edges.patching.EdgePatcher` (edges) provide. Memberships are drawn per subset
from ``(seed, j)`` (:func:`atpstar.diagnostics.bound.memberships`), so a checkpoint keeps only the
subsets' effects (:class:`Store`) and a rerun regenerates the memberships and patches only the
subsets still missing.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import load_checked
from .bound import BOUNDS, SubsetSums, check_probability, members_dot, memberships, min_samples


def sample(patcher, units, sums: SubsetSums, store: "Store", estimate, presence: Tensor, samples: int, p: float,
           seed: int, memory_mb: float, progress: bool, unit: str = "node") -> Tensor:
    """Patch (or reload) ``samples`` subsets of ``units``; accumulate ``sums``; return the (J, pairs) effects.

    ``estimate``: (N,) signed estimate per unit or None; each subset's predicted mean over pairs,
    ``Σ_{n∈S} q_n ê(n)`` with ``q_n = presence``, is subtracted from its mean effect."""
    n_units = len(units)
    chunk = int(max(1, min(256, memory_mb * 2**20 // (16 * n_units))))  # membership + the patcher's masks
    predict = None if estimate is None else estimate * presence  # a subset's predicted mean over pairs
    out = []
    with tqdm(total=samples, desc=f"diagnostic ({unit}s)", unit="subset", disable=not progress, leave=False) as bar:
        try:
            for lo in range(0, samples, chunk):
                members = memberships(n_units, p, seed, lo, min(chunk, samples - lo))
                have = max(0, min(len(store.effects) - lo, len(members)))
                effects = store.effects[lo:lo + have]
                if have < len(members):
                    fresh = patch(patcher, units, members[have:], lo + have, samples, unit)
                    effects = torch.cat([effects, fresh]) if have else fresh
                    store.append(fresh)
                y = effects.mean(1) - (0 if predict is None else members_dot(members, predict))
                sums.add(members, y)
                out.append(effects)
                bar.update(len(members))
        finally:
            store.save(force=True)
    return torch.cat(out)


def patch(patcher, units, members: Tensor, first: int, samples: int, unit: str = "node") -> Tensor:
    """(B, pairs) joint effects; a non-finite metric raises an error naming the subset and its size."""
    try:
        effects = sharded_effects(patcher, units, members)
    except FloatingPointError:
        effects = None
    if effects is not None and bool(torch.isfinite(effects).all()):
        return effects
    for row in range(len(members)):  # find the culprit (error path only)
        try:
            one = patcher.effects(units, members[row:row + 1])
            bad = not bool(torch.isfinite(one).all())
        except FloatingPointError:
            bad = True
        if bad:
            raise FloatingPointError(
                f"the metric is NaN or infinite when subset {first + row} of {samples} ({int(members[row].sum())} "
                f"unverified {unit}s, each included with probability p) is patched jointly: the bound would be NaN. "
                "Check the metric on heavily patched inputs (e.g. a log-probability that underflows), or lower p")
    raise FloatingPointError(f"the metric is NaN or infinite on a joint patch of subsets {first}..{first + len(members) - 1}")


def sharded_effects(patcher, units, members: Tensor) -> Tensor:
    """(B, pairs) joint effects; under torch.distributed each process patches every world()-th subset
    and the rows are all-reduced, so every process holds the whole table (one process: no change).
    A non-finite metric on any process becomes NaN rows here and is reported after the reduction."""
    if not distributed.active():
        return patcher.effects(units, members)
    rows = distributed.shard(torch.arange(len(members)))
    out = torch.zeros(len(members), len(patcher.pairs), dtype=torch.float64)
    if len(rows):
        try:
            out[rows] = patcher.effects(units, members[rows])
        except FloatingPointError:
            out[rows] = float("inf")  # surfaces as a non-finite entry after the reduction, on every rank
    return distributed.all_reduce(out)  # each row was filled by exactly one process


def store_key(base: str, p: float, seed: int, what: str = "diagnostic") -> str:
    """A checkpoint's key: the run's fingerprint ``base`` (model, pairs, units, metric), p and the seed."""
    return hashlib.sha256(f"{base}|{what}|p={p!r}|seed={seed}".encode()).hexdigest()


class Store:
    """The per-subset effects of one diagnostic run, saved atomically to ``path`` (None: kept in memory)."""

    def __init__(self, path, key: str, every: float, unit: str = "node"):
        self.path, self.key, self.every = (Path(path) if path else None), key, every
        self.effects = torch.zeros(0, 0, dtype=torch.float64)
        self.saved_at, self.dirty = time.monotonic(), False
        if self.path is not None and self.path.exists():
            state = load_checked(self.path)
            if state.get("key") != key:
                raise ValueError(f"checkpoint {self.path} belongs to a different diagnostic (model, pairs, unverified "
                                 f"{unit}s, metric, p or seed differ); delete it or pass another checkpoint path")
            self.effects = state["effects"]

    def append(self, effects: Tensor) -> None:
        self.effects = effects.clone() if len(self.effects) == 0 else torch.cat([self.effects, effects])
        self.dirty = True
        self.save()

    def save(self, force: bool = False) -> None:
        if self.path is None or not self.dirty or (not force and time.monotonic() - self.saved_at < self.every):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        torch.save({"key": self.key, "effects": self.effects}, tmp)
        os.replace(tmp, self.path)  # atomic: a crash never leaves a half-written checkpoint
        self.saved_at, self.dirty = time.monotonic(), False


SAMPLES, P, BOUND = 1000, 0.05, "subgaussian"
"""The diagnostic's defaults (random subsets, the chance a unit is in one, the bound), for nodes and edges."""


def check_options(samples, p, delta, bound) -> None:
    """Raise ValueError for options :func:`diagnose` cannot run with (before any model work)."""
    check_probability(p, "p")
    check_probability(delta, "delta")
    if bound not in BOUNDS:
        raise ValueError(f"unknown bound {bound!r}; use one of {BOUNDS}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2 (random subsets; the bound needs a variance), got {samples!r}")
    if bound == "subgaussian" and samples < min_samples(p, delta):
        raise ValueError(f"samples={samples} is too few for the sub-Gaussian bound at p={p}, delta={delta}: its "
                         f"variance bound needs at least {min_samples(p, delta)} subsets (several times more for a "
                         "useful bound); raise samples, raise p towards 0.5, or pass bound='normal' (asymptotic)")


def estimates_name(estimates) -> str | None:
    """The estimates' method name (None: no estimates)."""
    return None if estimates is None else str(getattr(estimates, "method", "estimates"))
