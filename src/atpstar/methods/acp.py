"""Exact activation patching (AcP, SPEC.md §2): the ground truth every estimator is tested against.

For each (pair, node): run the clean prompt with that one node overwritten by its value on the
noise prompt; effect ``I = L(patched) − L(clean)``. Many single-node patches run in one batched
forward pass (row r patches node r). Nodes are sorted by (position, layer), and each batch
computes only the blocks from its lowest patched layer (below: the cached clean residual stream)
and the positions from its lowest patched position (before: the clean keys/values, as causal
attention allows). A node whose noise value equals its clean value is a no-op with effect 0.
Batches are sized to a memory budget; long runs can checkpoint and resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoint import Checkpoint, fingerprint
from ..cost import Cost
from ..metrics import Metric, resolve
from ..nodes import NodeSet
from ..pairs import PromptPairs
from ..patching import GroupRuns, auto_batch_size, bucket_slices, by_kind, check_batch_size, moved, patched_metric
from ..scores import Accumulator, Scores


def acp(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, batch_size: int | None = None,
        memory_mb: float = 1024, per_pair: bool = False, progress: bool = True,
        checkpoint=None, checkpoint_every: float = 60.0) -> Scores:
    """Exact effect of patching each node (noise value into the clean run), per pair and averaged.

    Args:
        model: an :class:`~atpstar.model.Model` (see :func:`atpstar.load_model`).
        pairs: the prompt pairs.
        kinds: node kinds (``"attn"``, ``"all"``, ``["q", "neuron"]``...) when ``nodes`` is None.
        nodes: a subset: a DataFrame with kind/layer/unit/pos (e.g. rows of ``Scores.to_frame()``),
            a list of :class:`~atpstar.types.Node` or names like ``"L3.q.H5@12"``, or a NodeSet.
        metric: ``"logit_diff"``, ``"logprob"``, a callable ``(logits, pairs) -> (rows,)`` or None
            (the pairs' own metric).
        batch_size: patches per forward pass; default from ``memory_mb``.
        per_pair: also return per-pair effects in ``Scores.per_pair``.
        checkpoint: a file path: finished results are saved there every ``checkpoint_every``
            seconds, and a rerun with the same arguments resumes from it.

    Returns:
        :class:`~atpstar.scores.Scores` with ``effect`` = mean effect over pairs and
        ``score`` = |mean effect| (the true contribution c(n) of SPEC.md §1).
    """
    check_batch_size(batch_size)
    metric = resolve(metric, pairs)
    pairs.check_vocab(model.vocab_size)
    n_pos = pairs.max_len
    node_set = NodeSet.every(model, kinds, n_pos) if nodes is None else NodeSet.parse(model, nodes, n_pos)
    ckpt = Checkpoint(checkpoint, fingerprint(model, pairs, node_set, metric), checkpoint_every)
    patcher = _Patcher(model, metric, node_set, batch_size, memory_mb, ckpt)
    acc = Accumulator(model, node_set.kinds, len(pairs), n_pos, keep_per_pair=per_pair)
    total = sum(int((node_set.pos >= g.offset).sum()) * len(g.index) for g in pairs.groups())
    patcher.bar = tqdm(total=total, desc="activation patching", unit="patch", disable=not progress, leave=False)
    start = time.perf_counter()
    with torch.no_grad():
        for i, group in enumerate(pairs.groups()):
            for kind, eff in patcher.group(i, group).items():
                acc.add(kind, group, eff)
    patcher.bar.close()
    cost = Cost(forward=patcher.stats["forward_equivalents"], pairs=len(pairs), seconds=time.perf_counter() - start)
    info = {"metric": metric.name, **patcher.stats, "resumed": ckpt.resumed, "cost": cost}
    return acc.finish("acp", score="abs_mean", info=info)


@dataclass
class _Patcher:
    model: object
    metric: Metric
    node_set: NodeSet
    batch_size: int | None
    memory_mb: float
    ckpt: Checkpoint
    bar: object = None
    stats: dict = field(default_factory=lambda: {"forward_passes": 0, "forward_equivalents": 0.0, "patches": 0,
                                                 "skipped_identical": 0})

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
        size = self.batch_size or auto_batch_size(model, n_tok, self.memory_mb)
        for rows in bucket_slices(own_pos[job_node] * model.n_layers + nodes.layer[job_node] // LAYER_SPAN, size):
            rows_node, rows_pair = job_node[rows], job_pair[rows]
            value, cost = patched_metric(model, runs, nodes, own_pos, rows_node, torch.arange(len(rows_node)),
                                         rows_pair, self.metric)
            _scatter(effects, nodes, own_pos, rows_node, rows_pair, (value - runs.base[rows_pair]).double().cpu())
            self._count(len(rows_node), cost)
            self.stats["patches"] += len(rows_node)
            self.bar.update(len(rows_node))
            self.ckpt.update(index, effects)
        self.ckpt.update(index, effects, force=True)
        return effects

    def _count(self, rows: int, equivalents: float) -> None:
        self.stats["forward_passes"] += rows
        self.stats["forward_equivalents"] += equivalents


LAYER_SPAN = 4
"""A batch never mixes positions, nor layers from different spans of this many layers: it then starts
(computes) close to every one of its patches."""


def _scatter(effects: dict, nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor, delta: Tensor) -> None:
    for kind, sel, index in by_kind(nodes, own_pos, rows_node, rows_pair):
        effects[kind][index] = delta[sel]


def _gather(effects: dict, nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor) -> Tensor:
    out = torch.full((len(rows_node),), float("nan"), dtype=torch.float64)
    for kind, sel, index in by_kind(nodes, own_pos, rows_node, rows_pair):
        out[sel] = effects[kind][index]
    return out
