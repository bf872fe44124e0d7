"""Verification (SPEC.md §7): exact activation patching of nodes in the order of a ranking, until a
budget or a stop rule is met, or the ranking is exhausted.

Nodes are taken in rank order a *chunk* at a time; each chunk's (node, pair) patches run in
batched forward passes exactly as in :func:`atpstar.acp` (same batching, same layer/position
skipping, a node whose noise value equals its clean value is a free exact 0), with the clean and
noise runs captured once per call. After each chunk the stop rules see the partial result; a rule
with a vectorised ``check`` (e.g. :class:`~atpstar.stopping.SmallEffects`) reports the exact node
at which it fired, and the rest of the chunk, already paid for, is kept.

Cost, two ways (:mod:`atpstar.cost`):

- measured (:attr:`Verification.cost`): the clean and noise runs (2 forward passes per pair) plus
  every patched batch's forward-pass equivalents (fractional: skipped layers and positions), each
  batch's cost and seconds shared evenly by its rows. It is the cost of verifying *these nodes*,
  the same whether they were patched now, before an interruption (checkpoint) or in a ``prior``;
  :attr:`Verification.spent` is the work this call actually did.
- the paper's unit (:attr:`Verification.paper_cost`): one forward pass per verified node per pair.

A forward budget is on the measured cost per pair, and is never exceeded: the cost of a chunk is
known before it runs (it depends only on which batches run), so the last chunk is cut to the
longest prefix that fits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoint import run_key
from ..cost import Cost
from ..metrics import resolve
from ..nodes import NodeSet
from ..pairs import check_pairs
from ..substrate.patching import auto_batch_size, check_batch_size
from .ranking import Ranking, as_ranking, check_unique
from ..stopping import SmallEffects, as_rules, first_stop
from ..types import ALL_KINDS
from .patcher import ChunkPatcher
from .store import VerifiedStore

__all__ = ["Budget", "SmallEffects", "Verification", "verify"]


@dataclass(frozen=True)
class Budget:
    """Limits on a verification; any combination. ``forward``: measured forward-pass equivalents per
    prompt pair, the clean and noise runs (2 per pair) included (never exceeded). ``nodes``: verified
    nodes (never exceeded). ``seconds``: checked before each chunk (may be exceeded by one chunk).
    Limits bound the whole result, ``prior`` nodes included."""

    forward: float | None = None
    seconds: float | None = None
    nodes: int | None = None

    def __post_init__(self) -> None:
        if self.forward is None and self.seconds is None and self.nodes is None:
            raise ValueError("Budget needs at least one of forward= (forward-pass equivalents per pair), "
                             "seconds= or nodes=; pass budget=None for no budget")
        for name in ("forward", "seconds"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"Budget {name} must be a positive number, got {value!r}")
        if self.nodes is not None and (not isinstance(self.nodes, int) or isinstance(self.nodes, bool) or self.nodes < 1):
            raise ValueError(f"Budget nodes must be a positive integer, got {self.nodes!r}")
        if self.forward is not None and self.forward <= 2:
            raise ValueError(f"Budget forward={self.forward} per pair cannot pay for the clean and noise runs "
                             "(2 forward passes per pair) and any patch; verifying n nodes costs about 2 + n")

    @classmethod
    def parse(cls, budget) -> "Budget | None":
        if budget is None or isinstance(budget, Budget):
            return budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(f"budget must be a Budget, a number (forward-pass equivalents per pair) or None, "
                            f"got {type(budget).__name__}")
        return cls(forward=budget)


@dataclass
class Verification:
    """Nodes of a ranking verified by exact activation patching, in rank order (a prefix of it)."""

    ranking: NodeSet
    """The whole ranking, in ranked order."""
    nodes: NodeSet
    """The verified nodes: the first ``len(nodes)`` of the ranking."""
    per_pair: Tensor
    """(V, pairs) float64 exact effect per pair (NaN: the node's position is absent from that pair's prompt)."""
    effect: Tensor
    """(V,) float64 exact mean effect over the pairs that have the node."""
    estimate: Tensor
    """(V,) the ranking's signed estimate of the mean effect (NaN if it gave none)."""
    score: Tensor
    """(V,) the ranking's score (NaN if it gave none)."""
    rank: Tensor
    """(V,) 0-based rank of each verified node in the ranking."""
    node_cost: Tensor
    """(V,) measured forward-pass equivalents spent patching each node (all pairs together)."""
    node_seconds: Tensor
    """(V,) seconds spent patching each node."""
    cost: Cost
    """Measured cost of this verification (captures + every verified node), see the module docs."""
    spent: Cost
    """Work done by the call that returned this result (0 for nodes reused from a checkpoint or prior)."""
    stopped: str
    """Why verification stopped: ``"budget"``, ``"exhausted"`` or a stop rule's reason."""
    stop_index: int
    """Verified nodes when it stopped: a stop rule's exact point; nodes after it were paid for in the same chunk."""
    key: str
    """``atpstar.checkpoint.run_key(model, pairs, metric)``: the run these effects belong to."""
    patched: int = 0
    """Nodes patched by this call."""
    reused: int = 0
    """Nodes taken from the checkpoint or ``prior`` without patching."""
    wall_seconds: float = 0.0
    """Wall-clock seconds of this call."""
    model: object = field(default=None, repr=False, compare=False)
    pairs: object = field(default=None, repr=False, compare=False)
    metric: object = field(default=None, repr=False, compare=False)
    diagnosis: object = field(default=None, repr=False, compare=False)
    """The false-negative diagnostic (:class:`~atpstar.diagnostics.diagnosis.Diagnosis`) of ``verify(..., diagnose=...)``."""

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def verified_mask(self) -> Tensor:
        """(len(ranking),) bool: which ranking entries are verified."""
        mask = torch.zeros(len(self.ranking), dtype=torch.bool)
        mask[self.rank] = True
        return mask

    @property
    def paper_cost(self) -> Cost:
        """The paper's unit: one forward pass per verified node per pair (pairs lacking the node's position
        excluded), so ``paper_cost.per_pair()`` is the number of verified nodes."""
        return Cost(forward=float(self.per_pair.isfinite().sum()), pairs=self.per_pair.shape[1], seconds=self.cost.seconds)

    def to_frame(self) -> pd.DataFrame:
        """One row per verified node, in rank order: kind, layer, unit, pos, name, rank, effect (exact mean),
        mean_abs, score (= |effect|), estimate and estimate_score (the ranking's), cost (forward-pass
        equivalents per pair spent on it), before_stop (rank < stop_index)."""
        kind = pd.Series([k.value for k in ALL_KINDS])[self.nodes.kind.numpy()].to_numpy()
        letter = pd.Series([k.unit_letter for k in ALL_KINDS])[self.nodes.kind.numpy()].to_numpy()
        layer, unit, pos = (t.numpy() for t in (self.nodes.layer, self.nodes.unit, self.nodes.pos))
        name = pd.Series(layer).astype(str).radd("L") + "." + kind + "." + letter + pd.Series(unit).astype(str) \
            + "@" + pd.Series(pos).astype(str)
        return pd.DataFrame({
            "kind": kind, "layer": layer, "unit": unit, "pos": pos, "name": name, "rank": self.rank.numpy(),
            "effect": self.effect.numpy(), "mean_abs": self.per_pair.abs().nanmean(1).numpy(),
            "score": self.effect.abs().numpy(), "estimate": self.estimate.numpy(), "estimate_score": self.score.numpy(),
            "cost": (self.node_cost / max(self.per_pair.shape[1], 1)).numpy(),
            "before_stop": self.rank.numpy() < self.stop_index,
        })

    def __repr__(self) -> str:
        return (f"Verification({len(self.nodes)} of {len(self.ranking)} nodes, stopped: {self.stopped}, "
                f"{self.cost.per_pair():.1f} forward equivalents per pair ({self.paper_cost.per_pair():.0f} in the "
                f"paper's unit), {self.cost.seconds:.1f}s)")


def verify(model, pairs, ranking, budget=None, stop=None, metric=None, chunk: int | None = None, checkpoint=None,
           prior: Verification | None = None, progress: bool = True, batch_size: int | None = None,
           memory_mb: float = 1024, checkpoint_every: float = 60.0, diagnose=False) -> Verification:
    """Verify the nodes of ``ranking`` in order by exact activation patching.

    Args:
        model, pairs, metric: as for :func:`atpstar.acp`.
        ranking: a :class:`~atpstar.scores.Scores` (ranked by score; NaN-scored nodes left out), a
            DataFrame with kind/layer/unit/pos in ranked order (optional ``score``/``effect``
            columns: the ranking's score and estimate), node names, or a NodeSet.
        budget: a :class:`Budget`, or a number: forward-pass equivalents per pair (captures included).
        stop: a stop rule or a list of them (see :mod:`atpstar.stopping`), e.g. ``SmallEffects(window=20, relative=0.01)``.
        chunk: nodes per step (the stop rules run after each); default: one full batch of patches.
        checkpoint: a file path: every verified node is kept there (per run: model, pairs, metric),
            and a rerun, even of another ranking, patches none of them again.
        prior: a previous Verification of the same run: its nodes are reused without patching, so
            verifying more of the same ranking continues where it stopped.
        batch_size, memory_mb: patches per forward pass, as for :func:`atpstar.acp`.
        diagnose: True, or a dict of :func:`atpstar.diagnose` options (``samples``, ``p``, ``delta``...):
            end with the false-negative diagnostic of the unverified nodes (``result.diagnosis``); a
            Scores ranking serves as the estimates it subtracts.

    Returns:
        :class:`Verification`.
    """
    wall = time.perf_counter()
    check_batch_size(batch_size)
    check_pairs(pairs)
    metric = resolve(metric, pairs)
    pairs.check_vocab(model.vocab_size)
    budget, rules = Budget.parse(budget), as_rules(stop)
    dims = (model.n_layers, max(model.units(k) for k in ALL_KINDS), pairs.max_len)  # node ids of this run
    ranked = _parse_ranking(model, pairs, ranking, dims)
    key = run_key(model, pairs, metric)
    store = VerifiedStore(checkpoint, key, len(pairs), checkpoint_every)
    if prior is not None:
        _add_prior(store, prior, key, dims)
    patcher = ChunkPatcher(model, pairs, metric, ranked.nodes.kinds, batch_size, memory_mb)
    if chunk is None:
        chunk = max(1, math.ceil((batch_size or auto_batch_size(model, pairs.max_len, memory_mb)) / len(pairs)))
    elif not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (nodes per step), got {chunk!r}")
    loop = _Loop(ranked, ranked.nodes.ids(dims), store, patcher, budget, rules, key)
    try:
        loop.run(chunk, progress)
    finally:
        store.capture_seconds = patcher.capture_seconds if patcher.captured else store.capture_seconds
        store.save(force=True)
    result = loop.state(time.perf_counter() - wall, final=True)
    if diagnose:
        from ..diagnostics.diagnostic import diagnose as run_diagnostic

        options = {"estimates": ranking if hasattr(ranking, "effect") else None, "progress": progress,
                   "batch_size": batch_size, "memory_mb": memory_mb, **(diagnose if isinstance(diagnose, dict) else {})}
        result.diagnosis = run_diagnostic(model, pairs, result, metric=metric, **options)
    return result


def _parse_ranking(model, pairs, ranking, dims) -> Ranking:
    ranked = as_ranking(ranking)
    if ranked.from_scores:  # NaN in a Scores: not computed, or a position no prompt has
        ranked = ranked.take(ranked.score.isfinite())
    if len(ranked) == 0:
        raise ValueError("empty ranking: pass a Scores, a node table or node names with at least one node")
    ranked.nodes.check(model, pairs.max_len)
    check_unique(ranked.nodes, ranked.nodes.ids(dims), "the ranking")
    return ranked


def _add_prior(store: VerifiedStore, prior, key: str, dims) -> None:
    if not isinstance(prior, Verification):
        raise TypeError(f"prior must be a Verification returned by verify(), got {type(prior).__name__}")
    if prior.key != key:
        raise ValueError("prior is a Verification of a different run (another model, prompt pairs or metric); "
                         "its effects cannot be reused here")
    store.merge(prior.nodes.ids(dims), prior.per_pair, prior.node_cost, prior.node_seconds)
    if store.capture_seconds is None:
        store.capture_seconds = prior.cost.seconds - float(prior.node_seconds.sum())


class _Loop:
    """The chunk loop: results for the ranking prefix ``[0, done)`` in growable buffers."""

    def __init__(self, ranked: Ranking, ids: Tensor, store: VerifiedStore, patcher: ChunkPatcher, budget, rules, key):
        self.ranked, self.ids, self.store, self.patcher = ranked, ids, store, patcher
        self.budget, self.rules, self.key = budget, rules, key
        self.buffers = {"per_pair": torch.zeros(64, len(patcher.pairs), dtype=torch.float64),
                        "cost": torch.zeros(64, dtype=torch.float64), "seconds": torch.zeros(64, dtype=torch.float64)}
        self.done, self.patched, self.reused = 0, 0, 0
        self.stopped, self.stop_index = "", None

    def run(self, chunk: int, progress: bool) -> None:
        total = len(self.ranked) if self.budget is None or self.budget.nodes is None else min(len(self.ranked), self.budget.nodes)
        with tqdm(total=total, desc="verifying", unit="node", disable=not progress, leave=False) as bar:
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
        fresh = self.ranked.nodes.take(idx[~hit])
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

    def _fit(self, idx, hit, row, fresh: NodeSet, plans, allowed: float):
        """Longest prefix of the chunk whose measured cost keeps the total within ``allowed`` (bisection)."""
        base = 2.0 * len(self.patcher.pairs) + float(self.node_cost.sum())
        cached = torch.zeros(len(idx), dtype=torch.float64)
        cached[hit] = self.store.old["cost"][row[hit]]
        n_fresh = torch.cumsum((~hit).long(), 0)

        def total(m: int, plans=None):
            k = int(n_fresh[m - 1]) if m else 0
            plans = plans if plans is not None else self.patcher.plan(fresh.take(slice(0, k))) if k else []
            return base + float(cached[:m].sum()) + ChunkPatcher.cost(plans), plans

        if total(len(idx), plans)[0] <= allowed:
            return len(idx), plans
        lo, hi = 0, len(idx)  # total(lo) fits (or lo == 0), total(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if total(mid)[0] <= allowed else (lo, mid)
        return lo, total(lo)[1] if lo else []

    def _take(self, idx, hit, row, fresh: NodeSet, plans) -> None:
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
        cost = Cost(forward=2.0 * n_pairs + float(self.node_cost.sum()), pairs=n_pairs, seconds=self._seconds())
        return Verification(
            ranking=ranked.nodes, nodes=ranked.nodes.take(slice(0, v)), per_pair=per_pair, effect=effect,
            estimate=ranked.estimate[:v], score=ranked.score[:v], rank=torch.arange(v), node_cost=node_cost,
            node_seconds=node_seconds, cost=cost, spent=patcher.spent(wall), stopped=self.stopped,
            stop_index=v if self.stop_index is None else self.stop_index, key=self.key, patched=self.patched,
            reused=self.reused, wall_seconds=wall, model=patcher.model, pairs=patcher.pairs, metric=patcher.metric)
