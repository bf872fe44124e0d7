"""Exact activation patching (AcP): the ground truth every estimator is tested against.

For each (pair, node): run the clean prompt with that one node overwritten by its value on the
noise prompt; effect ``I = L(patched) − L(clean)``. Many single-node patches run in one batched
forward pass (row r patches node r). Nodes are sorted by (position, layer), and each batch
computes only the blocks from its lowest patched layer (below: the cached clean residual stream)
and the positions from its lowest patched position (before: the clean keys/values, as causal
attention allows). Consecutive (position, layer) cells share a batch while that is cheaper than a
new forward pass, by the measured fixed cost of a pass (:mod:`atpstar.substrate.batching`), so sparse node
sets batch as well as dense ones. A node whose noise value equals its clean value is a no-op with
effect 0. Batches are sized to the device's free memory; long runs can checkpoint and resume.
Under ``torch.distributed`` each rank patches its share of the pairs (:mod:`atpstar.distributed`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .. import distributed
from ..checkpoint import Checkpoint, fingerprint
from ..cost import Cost
from ..metrics import Metric, resolve
from ..nodes import NodeSet
from ..pairs import PromptPairs, check_pairs
from ..substrate.batching import max_rows, memory_budget_mb, overhead_ratio, plan_batches
from ..substrate.patching import LAYER_SPAN, GroupRuns, bucket_slices, by_kind, check_batch_size, moved, patched_metric
from ..scores import Accumulator, Scores


def acp(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, batch_size: int | None = None,
        memory_mb: float | None = None, per_pair: bool = False, progress: bool = True,
        checkpoint=None, checkpoint_every: float = 60.0) -> Scores:
    """Exact effect of patching each node (noise value into the clean run), per pair and averaged.

    Args:
        model: an :class:`~atpstar.substrate.model.Model` (see :func:`atpstar.load_model`).
        pairs: the prompt pairs.
        kinds: node kinds (``"attn"``, ``"all"``, ``["q", "neuron"]``...) when ``nodes`` is None.
        nodes: a subset: a DataFrame with kind/layer/unit/pos (e.g. rows of ``Scores.to_frame()``),
            a list of :class:`~atpstar.types.Node` or names like ``"L3.q.H5@12"``, or a NodeSet.
        metric: ``"logit_diff"``, ``"logprob"``, a callable ``(logits, pairs) -> (rows,)`` or None
            (the pairs' own metric).
        batch_size: patches per forward pass, never across a position or a 4-layer span (as
            :func:`atpstar.verify` batches). Default: cost-aware batches (:mod:`atpstar.substrate.batching`) of at
            most what fits ``memory_mb``.
        memory_mb: memory one batch may use; default a quarter of the device's free memory.
        per_pair: also return per-pair effects in ``Scores.per_pair``.
        checkpoint: a file path: finished results are saved there every ``checkpoint_every``
            seconds, and a rerun with the same arguments resumes from it.

    Returns:
        :class:`~atpstar.scores.Scores` with ``effect`` = mean effect over pairs and
        ``score`` = |mean effect| (the true contribution c(n) of the node).
    """
    check_batch_size(batch_size)
    check_pairs(pairs)
    metric = resolve(metric, pairs)
    pairs.check_vocab(model.vocab_size)
    n_pos = pairs.max_len
    node_set = NodeSet.every(model, kinds, n_pos) if nodes is None else NodeSet.parse(model, nodes, n_pos)
    ckpt = Checkpoint(distributed.rank_path(checkpoint), fingerprint(model, pairs, node_set, metric), checkpoint_every)
    patcher = _Patcher(model, metric, node_set, batch_size, memory_mb, ckpt)
    acc = Accumulator(model, node_set.kinds, len(pairs), n_pos, keep_per_pair=per_pair)
    groups = [(i, mine) for i, g in enumerate(pairs.groups()) if (mine := distributed.shard_group(g)) is not None]
    total = sum(int((node_set.pos >= g.offset).sum()) * len(g.index) for _, g in groups)
    patcher.bar = tqdm(total=total, desc="activation patching", unit="patch", disable=not progress, leave=False)
    start = time.perf_counter()
    with torch.no_grad():
        for i, group in groups:
            for kind, eff in patcher.group(i, group).items():
                acc.add(kind, group, eff)
    patcher.bar.close()
    acc.all_reduce()
    patcher.reduce_stats()
    cost = Cost(forward=patcher.stats["forward_equivalents"], pairs=len(pairs), seconds=time.perf_counter() - start)
    info = {"metric": metric.name, **patcher.stats, "resumed": ckpt.resumed, "cost": cost}
    return acc.finish("acp", score="abs_mean", info=info)


@dataclass
class _Patcher:
    model: object
    metric: Metric
    node_set: NodeSet
    batch_size: int | None
    memory_mb: float | None
    ckpt: Checkpoint
    bar: object = None
    stats: dict = field(default_factory=lambda: {"forward_passes": 0, "forward_equivalents": 0.0, "patches": 0,
                                                 "skipped_identical": 0, "batches": 0})

    def group(self, index: int, group) -> dict:
        """Per-pair effects {kind: (G, layers, units, T)} of every node for one length group."""
        model, kinds = self.model, self.node_set.kinds
        n_group, n_tok = group.clean.shape
        runs = GroupRuns.capture(model, group, kinds, self.metric)
        self._count(2 * n_group, 2 * n_group)
        nodes = self.node_set.take(self.node_set.pos >= group.offset)
        own_pos = nodes.pos - group.offset
        effects = self.ckpt.get(index) or {
            k: torch.full((n_group, model.n_layers, model.units(k), n_tok), float("nan"), dtype=torch.float64) for k in kinds}
        # jobs: every (pair, node) not done yet, sorted by (position, layer)
        order = torch.argsort(own_pos * model.n_layers + nodes.layer, stable=True)
        job_node, job_pair = order.repeat_interleave(n_group), torch.arange(n_group).repeat(len(order))
        todo = ~_gather(effects, nodes, own_pos, job_node, job_pair).isfinite()
        self.bar.update(int((~todo).sum()))
        job_node, job_pair = job_node[todo], job_pair[todo]
        # a node whose noise value equals its clean value bit for bit is a no-op patch: effect exactly 0
        live = moved(model, runs, nodes, own_pos, job_node, job_pair)
        _scatter(effects, nodes, own_pos, job_node[~live], job_pair[~live], torch.zeros(int((~live).sum()), dtype=torch.float64))
        self.stats["skipped_identical"] += int((~live).sum())
        self.bar.update(int((~live).sum()))
        job_node, job_pair = job_node[live], job_pair[live]
        for rows in self._batches(group, own_pos[job_node], nodes.layer[job_node]):
            rows_node, rows_pair = job_node[rows], job_pair[rows]
            value, cost = patched_metric(model, runs, nodes, own_pos, rows_node, torch.arange(len(rows_node)),
                                         rows_pair, self.metric)
            _scatter(effects, nodes, own_pos, rows_node, rows_pair, (value.double() - runs.base[rows_pair].double()).cpu())
            self._count(len(rows_node), cost)
            self.stats["batches"] += 1
            self.stats["patches"] += len(rows_node)
            self.bar.update(len(rows_node))
            self.ckpt.update(index, effects)
        self.ckpt.update(index, effects, force=True)
        return effects

    def _batches(self, group, pos: Tensor, layer: Tensor) -> list[slice]:
        """Batches of the sorted jobs (positions ``pos``, layers ``layer``): with a given ``batch_size``, at
        most that many per (position, 4-layer span), as :mod:`atpstar.verify` batches; else cost-aware
        and memory-sized (:func:`atpstar.substrate.batching.plan_batches`)."""
        model, n_tok = self.model, group.clean.shape[1]
        if self.batch_size:
            return bucket_slices(pos * model.n_layers + layer // LAYER_SPAN, self.batch_size)
        overhead = overhead_ratio(model, group.clean[0]) if len(pos) >= CALIBRATE_FROM else 1.0
        budget = self.memory_mb if self.memory_mb is not None else memory_budget_mb(model.device)
        size = max_rows(model, n_tok, budget)
        return plan_batches(pos, layer, model.n_layers, n_tok, size, overhead)

    def reduce_stats(self) -> None:
        """Sum the work counters over ``torch.distributed`` ranks (identity in one process)."""
        names = list(self.stats)
        total = distributed.all_reduce(torch.tensor([float(self.stats[n]) for n in names], dtype=torch.float64))
        self.stats.update({n: type(self.stats[n])(v) for n, v in zip(names, total.tolist())})

    def _count(self, rows: int, equivalents: float) -> None:
        self.stats["forward_passes"] += rows
        self.stats["forward_equivalents"] += equivalents


CALIBRATE_FROM = 64
"""On GPUs, measure the fixed cost of a forward pass (two small timed forwards, cached) only for at least
this many patches; fewer are batched assuming it equals the cost of one row."""


def _scatter(effects: dict, nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor, delta: Tensor) -> None:
    for kind, sel, index in by_kind(nodes, own_pos, rows_node, rows_pair):
        effects[kind][index] = delta[sel]


def _gather(effects: dict, nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor) -> Tensor:
    out = torch.full((len(rows_node),), float("nan"), dtype=torch.float64)
    for kind, sel, index in by_kind(nodes, own_pos, rows_node, rows_pair):
        out[sel] = effects[kind][index]
    return out
