"""Exact single-node patches of chunks of nodes, planned first: the node kind's patcher (:class:`atpstar.units.UnitPatcher`).

The clean and noise runs are captured once (on the first chunk) and reused by every later chunk.
A chunk is *planned* before it runs: its jobs sorted and batched exactly as :func:`atpstar.acp`
does (never crossing a position or a span of :data:`~atpstar.substrate.patching.LAYER_SPAN` layers), with
each batch's cost in forward-pass equivalents computed from what the batch will skip, the same
formula :func:`~atpstar.substrate.patching.patched_metric` measures with. So the cost of a chunk is known
before paying for it, which is what lets a forward budget be honoured exactly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..cost import Cost
from .. import distributed
from ..nodes import NodeSet
from .joint import joint_patch
from .patching import LAYER_SPAN, GroupRuns, auto_batch_size, bucket_slices, moved, patched_metric


@dataclass
class GroupPlan:
    """The batches of one length group for one chunk."""

    runs: GroupRuns
    own_pos: Tensor
    """(n,) each node's position in this group's prompts (< 0: absent)."""
    zero_node: Tensor
    zero_pair: Tensor
    """Jobs whose noise value equals the clean value: effect exactly 0, nothing to run."""
    job_node: Tensor
    job_pair: Tensor
    """Jobs to run, sorted by (position, layer); ``job_pair`` indexes the group's pairs."""
    slices: list
    """One slice of the jobs per batch."""
    costs: Tensor
    """(batches,) forward-pass equivalents of each batch."""


class ChunkPatcher:
    """Exact single-node patches of chunks of nodes, clean/noise captured once (on the first plan)."""

    capture_forward = 2.0
    """The clean and noise runs: 2 forward passes per pair."""

    def __init__(self, model, pairs, metric, kinds, batch_size: int | None, memory_mb: float):
        self.model, self.pairs, self.metric, self.kinds = model, pairs, metric, kinds
        self.batch_size, self.memory_mb = batch_size, memory_mb
        self.groups: list[GroupRuns] | None = None
        self.capture_seconds, self.forward, self.start = 0.0, 0.0, time.perf_counter()

    @property
    def captured(self) -> bool:
        return self.groups is not None

    def capture(self) -> list[GroupRuns]:
        if self.groups is None:
            t0 = time.perf_counter()
            self.groups = [GroupRuns.capture(self.model, g, self.kinds, self.metric) for g in self.pairs.groups()]
            self.capture_seconds = time.perf_counter() - t0
        return self.groups

    def plan(self, nodes: NodeSet) -> list[GroupPlan]:
        """The batches that patch every node of ``nodes`` on every pair that has its position."""
        return [self._plan_group(runs, nodes) for runs in self.capture()]

    def _plan_group(self, runs: GroupRuns, nodes: NodeSet) -> GroupPlan:
        model, n_layers = self.model, self.model.n_layers
        n_group, n_tok = runs.group.clean.shape
        own_pos = nodes.pos - runs.group.offset
        present = (own_pos >= 0).nonzero().flatten()
        order = present[torch.argsort(own_pos[present] * n_layers + nodes.layer[present], stable=True)]
        job_node, job_pair = order.repeat_interleave(n_group), torch.arange(n_group).repeat(len(order))
        live = moved(model, runs, nodes, own_pos, job_node, job_pair)
        job_n, job_p = job_node[live], job_pair[live]
        size = self.batch_size or auto_batch_size(model, n_tok, self.memory_mb)
        slices = bucket_slices(own_pos[job_n] * n_layers + nodes.layer[job_n] // LAYER_SPAN, size)
        first = job_n[torch.tensor([s.start for s in slices], dtype=torch.long)]  # lowest (pos, layer) of each batch
        rows = torch.tensor([s.stop - s.start for s in slices], dtype=torch.float64)
        # == patched_metric's measure: rows * (L - layer0) * (T - pos0) / (L * T)
        costs = rows * (n_layers - nodes.layer[first]) * (n_tok - own_pos[first]) / (n_layers * n_tok)
        return GroupPlan(runs, own_pos, job_node[~live], job_pair[~live], job_n, job_p, slices, costs)

    def static(self, nodes: NodeSet) -> Tensor:
        """(N,) bool: the node's noise value equals its clean value on every pair that has its position."""
        live = torch.zeros(len(nodes), dtype=torch.bool)
        for runs in self.capture():
            own_pos = nodes.pos - runs.group.offset
            present = (own_pos >= 0).nonzero().flatten()
            n_group = runs.group.clean.shape[0]
            node, pair = present.repeat_interleave(n_group), torch.arange(n_group).repeat(len(present))
            live[node[moved(self.model, runs, nodes, own_pos, node, pair)]] = True
        return ~live

    def joint(self, nodes: NodeSet, sets) -> Tensor:
        """(sets, pairs) effect of patching each set of ``nodes`` together (see :func:`~atpstar.joint_patch`)."""
        return joint_patch(self.model, self.pairs, nodes, sets, metric=self.metric, batch_size=self.batch_size)

    @staticmethod
    def cost(plans: list[GroupPlan]) -> float:
        """Forward-pass equivalents the plans will cost."""
        return float(sum(float(p.costs.sum()) for p in plans))

    def run(self, nodes: NodeSet, plans: list[GroupPlan]) -> tuple[Tensor, Tensor, Tensor]:
        """(n, pairs) float64 effects (NaN: position absent from the pair), and per node the forward-pass
        equivalents and seconds spent (each batch's shared evenly by its rows)."""
        n = len(nodes)
        out = torch.full((n, len(self.pairs)), float("nan"), dtype=torch.float64)
        cost, seconds = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        batch, rank, world = 0, distributed.rank(), distributed.world()
        with torch.no_grad():
            for plan in plans:
                index = plan.runs.group.index
                if rank == 0:
                    out[plan.zero_node, index[plan.zero_pair]] = 0.0
                for rows, planned in zip(plan.slices, plan.costs.tolist()):
                    batch += 1
                    if (batch - 1) % world != rank:  # several processes: every world()-th batch each
                        continue
                    node, pair = plan.job_node[rows], plan.job_pair[rows]
                    t0 = time.perf_counter()
                    value, spent = patched_metric(self.model, plan.runs, nodes, plan.own_pos, node,
                                                  torch.arange(len(node)), pair, self.metric)
                    out[node, index[pair]] = (value - plan.runs.base[pair]).double().cpu()
                    if abs(spent - planned) > 1e-9 * max(1.0, spent):
                        raise RuntimeError(f"internal error: a batch cost {spent} forward passes, planned {planned}")
                    share = torch.full((len(node),), 1.0 / len(node), dtype=torch.float64)
                    cost.index_add_(0, node, share * spent)
                    seconds.index_add_(0, node, share * (time.perf_counter() - t0))
                    self.forward += spent
        if distributed.active():  # each entry was patched by one process: combine, every rank gets all
            distributed.all_reduce_rows(out)
            distributed.all_reduce(cost)
            distributed.all_reduce(seconds)
        return out, cost, seconds

    def spent(self, wall: float) -> Cost:
        """The work this patcher did: captures (if any) plus every patched batch."""
        captures = 2.0 * len(self.pairs) if self.captured else 0.0
        return Cost(forward=captures + self.forward, pairs=len(self.pairs), seconds=wall)
