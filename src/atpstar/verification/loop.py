"""Verification: exact patching of the units of a ranking — nodes or edges alike (:mod:`atpstar.units`) —
in ranked order, until a budget or a stop rule is met, or the ranking is exhausted.

Units are taken in rank order a *chunk* at a time; each chunk's (unit, pair) patches run in
batched forward passes planned by the unit kind's patcher (nodes exactly as in :func:`atpstar.acp`:
same batching, same layer/position skipping, a node whose noise value equals its clean value is a
free exact 0; edges as in :func:`atpstar.edges.edge_acp`), with the captures taken once per call.
After each chunk the stop rules see the partial result; a rule with a vectorised ``check`` (e.g.
:class:`~atpstar.stopping.SmallEffects`) reports the exact unit at which it fired, and the rest of the chunk, already paid for, is kept. Every verified unit is kept
in a store (:mod:`.store`) keyed by unit id, saved to ``checkpoint`` so an interrupted verification
resumes without patching a unit twice.

Cost, two ways (:mod:`atpstar.cost`):

- measured (:attr:`Verification.cost`): the captures (nodes: the clean and noise runs, 2 forward
  passes per pair; edges: 4) plus every patched batch's forward-pass equivalents (fractional:
  skipped layers and positions), each batch's cost and seconds shared evenly by its rows. It is the
  cost of verifying *these units*,
  the same whether they were patched now, before an interruption (checkpoint) or in a ``prior``;
  :attr:`Verification.spent` is the work this call actually did.
- the paper's unit (:attr:`Verification.paper_cost`): one forward pass per verified unit per pair.

A forward budget is on the measured cost per pair, and is never exceeded: the cost of a chunk is
known before it runs (it depends only on which batches run), so the last chunk is cut to the
longest prefix that fits.
"""

from __future__ import annotations

import math
import time
import warnings

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoint import run_key
from ..cost import Cost
from ..metrics import resolve
from ..pairs import check_pairs
from ..ranking import Ranking
from ..stopping import SmallEffects, as_rules, first_stop
from ..substrate.patching import auto_batch_size, check_batch_size
from ..units import bind
from .result import Budget, Verification
from .store import VerifiedStore

__all__ = ["Budget", "SmallEffects", "Verification", "verify"]

LARGE = 10_000
"""Units above which a verification with no budget and no stop rule says what it is about to do."""


def verify(model, pairs, ranking, budget=None, stop=None, metric=None, chunk: int | None = None, checkpoint=None,
           prior: Verification | None = None, progress: bool = True, batch_size: int | None = None,
           memory_mb: float = 1024, checkpoint_every: float = 60.0, diagnose=False) -> Verification:
    """Verify the units (nodes or edges) of ``ranking`` in order by exact patching.

    Args:
        model, pairs, metric: as for :func:`atpstar.acp`.
        ranking: a :class:`~atpstar.scores.Scores` (ranked by score; NaN-scored nodes left out), a
            DataFrame with kind/layer/unit/pos in ranked order (optional ``score``/``effect``
            columns: the ranking's score and estimate), node names, or a NodeSet; or edges: an
            :class:`~atpstar.edges.EdgeScores` (ranked by score), an EdgeSet, edge names or an edge table
            (writer, reader, pos) in ranked order.
        budget: a :class:`Budget`, or a number: forward-pass equivalents per pair (captures included).
        stop: a stop rule or a list of them (see :mod:`atpstar.stopping`), e.g. ``SmallEffects(window=20, relative=0.01)``.
        chunk: units per step (the stop rules run after each); default: one full batch of patches.
            A verification with neither budget nor stop rule over more than 10,000 units warns first
            (units, patches, estimated time).
        checkpoint: a file path: every verified unit is kept there (per run: model, pairs, metric),
            and a rerun, even of another ranking, patches none of them again.
        prior: a previous Verification of the same run: its units are reused without patching, so
            verifying more of the same ranking continues where it stopped.
        batch_size, memory_mb: patches per forward pass, as for :func:`atpstar.acp`.
        diagnose: True, or a dict of :func:`atpstar.diagnose` options (``samples``, ``p``, ``delta``...):
            end with the false-negative diagnostic of the unverified units (``result.diagnosis``); a
            Scores (EdgeScores) ranking serves as the estimates it subtracts.

    Returns:
        :class:`Verification`.
    """
    wall = time.perf_counter()
    check_batch_size(batch_size)
    check_pairs(pairs)
    metric = resolve(metric, pairs)
    pairs.check_vocab(model.vocab_size)
    budget, rules = Budget.parse(budget), as_rules(stop)
    unit = bind(model, pairs, ranking)
    ranked = unit.ranking(ranking)
    key = run_key(model, pairs, metric)
    store = VerifiedStore(checkpoint, unit.store_key(key), len(pairs), checkpoint_every)
    if prior is not None:
        _add_prior(store, prior, key, unit)
    patcher = unit.patcher(metric, ranked.units, batch_size, memory_mb)
    _check_forward(budget, patcher, unit)
    if chunk is None:
        chunk = max(1, math.ceil((batch_size or auto_batch_size(model, pairs.max_len, memory_mb)) / len(pairs)))
    elif not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer ({unit.plural} per step), got {chunk!r}")
    ids = unit.ids(ranked.units)
    if budget is None and not rules and len(ranked) > LARGE:
        warnings.warn(_plan_words(unit, ids, patcher, store), stacklevel=2)
    loop = _Loop(ranked, unit, ids, store, patcher, budget, rules, key)
    try:
        loop.run(chunk, progress)
    finally:
        store.capture_seconds = patcher.capture_seconds if patcher.captured else store.capture_seconds
        store.save(force=True)
    result = loop.state(time.perf_counter() - wall, final=True)
    if diagnose:
        result.diagnosis = _diagnose(model, pairs, result, ranking, metric, diagnose, progress, batch_size, memory_mb)
    return result


def _check_forward(budget, patcher, unit) -> None:
    if budget is not None and budget.forward is not None and budget.forward <= patcher.capture_forward:
        raise ValueError(f"Budget forward={budget.forward} per pair cannot pay for the captures every {unit.name} "
                         f"patch builds on ({patcher.capture_forward:g} forward passes per pair) and any patch; "
                         f"verifying n {unit.plural} costs about {patcher.capture_forward:g} + n")


def _plan_words(unit, ids: Tensor, patcher, store) -> str:
    """What an unbounded verification of the units ``ids`` is about to do: units, patches and a time estimate
    from the captures."""
    n, n_pairs = len(ids), len(patcher.pairs)
    fresh = n - int(store.lookup(ids)[0].sum())
    patcher.capture()  # the captures time one forward pass
    per_forward = patcher.capture_seconds / (patcher.capture_forward * n_pairs)
    return (f"verifying every one of the {n:,} ranked {unit.plural} (no budget and no stop rule): up to "
            f"{fresh * n_pairs:,} patched forward passes ({fresh:,} {unit.plural} not yet verified x {n_pairs} pairs), "
            f"about {fresh * n_pairs * per_forward / 3600:.1f} hours at the captures' speed "
            f"({per_forward * 1e3:.1f} ms per forward pass). Pass budget=atpstar.Budget(nodes=...) or "
            f"stop=atpstar.SmallEffects(...) to verify the top only")


def _diagnose(model, pairs, result: Verification, ranking, metric, diagnose, progress, batch_size, memory_mb):
    """``verify(..., diagnose=...)``: the false-negative diagnostic of the units left unverified."""
    from ..diagnostics.diagnostic import diagnose as run_diagnostic

    options = {"estimates": ranking if hasattr(ranking, "effect") else None, "progress": progress,
               "batch_size": batch_size, "memory_mb": memory_mb, **(diagnose if isinstance(diagnose, dict) else {})}
    return run_diagnostic(model, pairs, result, metric=metric, **options)


def _add_prior(store: VerifiedStore, prior, key: str, unit) -> None:
    if not isinstance(prior, Verification):
        raise TypeError(f"prior must be a Verification returned by verify(), got {type(prior).__name__}")
    if prior.key != key:
        raise ValueError("prior is a Verification of a different run (another model, prompt pairs or metric); "
                         "its effects cannot be reused here")
    if prior.unit is not None and prior.unit.name != unit.name:
        raise TypeError(f"prior is a verification of {prior.unit.plural}, but this ranking is of {unit.plural}: "
                        f"pass a prior Verification of the same {unit.plural}, or prior=None")
    store.merge(unit.ids(prior.nodes), prior.per_pair, prior.node_cost, prior.node_seconds)
    if store.capture_seconds is None:
        store.capture_seconds = prior.cost.seconds - float(prior.node_seconds.sum())


class _Loop:
    """The chunk loop: results for the ranking prefix ``[0, done)`` in growable buffers."""

    def __init__(self, ranked: Ranking, unit, ids: Tensor, store: VerifiedStore, patcher, budget, rules, key):
        self.ranked, self.unit, self.ids, self.store, self.patcher = ranked, unit, ids, store, patcher
        self.budget, self.rules, self.key = budget, rules, key
        self.buffers = {"per_pair": torch.zeros(64, len(patcher.pairs), dtype=torch.float64),
                        "cost": torch.zeros(64, dtype=torch.float64), "seconds": torch.zeros(64, dtype=torch.float64)}
        self.done, self.patched, self.reused = 0, 0, 0
        self.stopped, self.stop_index = "", None

    def run(self, chunk: int, progress: bool) -> None:
        total = len(self.ranked) if self.budget is None or self.budget.nodes is None else min(len(self.ranked), self.budget.nodes)
        with tqdm(total=total, desc="verifying", unit=self.unit.name, disable=not progress, leave=False) as bar:
            while not self.stopped:
                before = self.done
                self._step(chunk)
                bar.update(self.done - before)

    def _step(self, chunk: int) -> None:
        budget, n = self.budget, len(self.ranked)
        if self.done == n:
            self.stopped = "exhausted"
            return
        limit = chunk if budget is None or budget.nodes is None else min(chunk, budget.nodes - self.done)
        if limit <= 0 or (budget is not None and budget.seconds is not None and self._seconds() >= budget.seconds):
            self.stopped = "budget"
            return
        idx = torch.arange(self.done, min(self.done + limit, n))
        hit, row = self.store.lookup(self.ids[idx])
        fresh = self.ranked.units.take(idx[~hit])
        plans = self.patcher.plan(fresh) if len(fresh) else []
        cut = len(idx)
        if budget is not None and budget.forward is not None:
            cut, plans = self._fit(idx, hit, row, fresh, plans, budget.forward * len(self.patcher.pairs))
        if cut:
            self._take(idx[:cut], hit[:cut], row[:cut], fresh.take(slice(0, int((~hit[:cut]).sum()))), plans)
            found = first_stop(self.rules, self.state(), self.done - cut)
            if found is not None:
                self.stop_index, self.stopped = found
                return
        if cut < len(idx):
            self.stopped = "budget"

    def _fit(self, idx, hit, row, fresh, plans, allowed: float):
        """Longest prefix of the chunk whose measured cost keeps the total within ``allowed`` (bisection)."""
        base = self.patcher.capture_forward * len(self.patcher.pairs) + float(self.node_cost.sum())
        cached = torch.zeros(len(idx), dtype=torch.float64)
        cached[hit] = self.store.old["cost"][row[hit]]
        n_fresh = torch.cumsum((~hit).long(), 0)

        def total(m: int, plans=None):
            k = int(n_fresh[m - 1]) if m else 0
            plans = plans if plans is not None else self.patcher.plan(fresh.take(slice(0, k))) if k else []
            return base + float(cached[:m].sum()) + self.patcher.cost(plans), plans

        if total(len(idx), plans)[0] <= allowed:
            return len(idx), plans
        lo, hi = 0, len(idx)  # total(lo) fits (or lo == 0), total(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if total(mid)[0] <= allowed else (lo, mid)
        return lo, total(lo)[1] if lo else []

    def _take(self, idx, hit, row, fresh, plans) -> None:
        """Results of chunk ``idx``: stored rows where ``hit``, the rest patched now."""
        per_pair = torch.empty(len(idx), self.per_pair.shape[1], dtype=torch.float64)
        cost, seconds = torch.empty(len(idx), dtype=torch.float64), torch.empty(len(idx), dtype=torch.float64)
        old = self.store.old
        per_pair[hit], cost[hit], seconds[hit] = old["per_pair"][row[hit]], old["cost"][row[hit]], old["seconds"][row[hit]]
        if len(fresh):
            new = self.patcher.run(fresh, plans)
            per_pair[~hit], cost[~hit], seconds[~hit] = new
            self.store.commit(self.ids[idx[~hit]], *new)
            self.store.save()
        end = self.done + len(idx)
        for name, values in (("per_pair", per_pair), ("cost", cost), ("seconds", seconds)):
            buf = self.buffers[name]
            if end > len(buf):  # grow by doubling: appending stays O(1) per node
                grow = buf.new_zeros((max(len(buf), end - len(buf)), *buf.shape[1:]))
                buf = self.buffers[name] = torch.cat([buf, grow])
            buf[self.done:end] = values
        self.done = end
        self.patched += len(fresh)
        self.reused += len(idx) - len(fresh)

    def _capture_seconds(self) -> float:
        if self.patcher.captured:
            return self.patcher.capture_seconds
        return self.store.capture_seconds or 0.0

    @property
    def per_pair(self) -> Tensor:
        return self.buffers["per_pair"][:self.done]

    @property
    def node_cost(self) -> Tensor:
        return self.buffers["cost"][:self.done]

    @property
    def node_seconds(self) -> Tensor:
        return self.buffers["seconds"][:self.done]

    def _seconds(self) -> float:
        return self._capture_seconds() + float(self.node_seconds.sum())

    def state(self, wall: float = 0.0, final: bool = False) -> Verification:
        """The result so far (what stop rules see: views of the buffers), or the final one (copies)."""
        v, ranked, patcher = self.done, self.ranked, self.patcher
        n_pairs = len(patcher.pairs)
        per_pair, node_cost, node_seconds = ((t.clone() if final else t) for t in (self.per_pair, self.node_cost, self.node_seconds))
        effect = per_pair.nanmean(1) if v else torch.zeros(0, dtype=torch.float64)
        cost = Cost(forward=patcher.capture_forward * n_pairs + float(self.node_cost.sum()), pairs=n_pairs,
                    seconds=self._seconds())
        return Verification(
            ranking=ranked.units, nodes=ranked.units.take(slice(0, v)), per_pair=per_pair, effect=effect,
            estimate=ranked.estimate[:v], score=ranked.score[:v], rank=torch.arange(v), node_cost=node_cost,
            node_seconds=node_seconds, cost=cost, spent=patcher.spent(wall), stopped=self.stopped,
            stop_index=v if self.stop_index is None else self.stop_index, key=self.key, patched=self.patched,
            reused=self.reused, wall_seconds=wall, model=patcher.model, pairs=patcher.pairs, metric=patcher.metric,
            unit=self.unit)
