"""Joint patching: every node of a set takes its noise value in one forward pass.

``I(S; pair) = L(M(clean | do(n ← n(noise)) for all n in S)) − L(M(clean))``. Subsampling, Blocks,
Hierarchical and the false-negative diagnostic are all built on it. Sets are given as a list of
index tensors into a node set, or as a (sets, nodes) boolean membership matrix; many sets (and all
pairs of a length group) share one batched forward pass, each batch row patching one set on one
pair through masks over whole sites (memory per batch: one site-sized mask per touched site, not per
node). Clean and noise runs are captured once per :class:`JointPatcher` and reused by every call.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..metrics import resolve
from ..nodes import NodeSet
from ..pairs import PromptPairs, check_pairs
from .patching import GroupRuns, auto_batch_size, check_batch_size, patched_metric
from ..types import NodeKind


class JointPatcher:
    """Joint patches of node sets on every prompt pair, with clean/noise runs captured once.

    Args:
        model, pairs, metric: as for :func:`atpstar.acp`.
        kinds: node kinds the sets may contain (their clean/noise values are captured).
        batch_size: rows (set × pair) per forward pass; default from ``memory_mb``.
    """

    def __init__(self, model, pairs: PromptPairs, kinds="all", metric=None, batch_size: int | None = None,
                 memory_mb: float = 1024):
        check_batch_size(batch_size)
        self.model, self.pairs = model, pairs
        check_pairs(pairs)
        self.metric = resolve(metric, pairs)
        pairs.check_vocab(model.vocab_size)
        self.kinds = NodeKind.parse(kinds)
        self.batch_size, self.memory_mb = batch_size, memory_mb
        start = time.perf_counter()
        self.groups = [GroupRuns.capture(model, g, self.kinds, self.metric) for g in pairs.groups()]
        self.stats = {"forward_passes": 2 * len(pairs), "forward_equivalents": 2.0 * len(pairs), "patched_rows": 0,
                      "seconds": time.perf_counter() - start}

    @property
    def base(self) -> Tensor:
        """(pairs,) clean metric."""
        return clean_base(self.groups, len(self.pairs))

    def nodes(self, nodes) -> NodeSet:
        """Parse and range-check a node set against the model, the prompts and the captured kinds."""
        node_set = NodeSet.parse(self.model, nodes, self.pairs.max_len)
        missing = set(node_set.kinds) - set(self.kinds)
        if missing:
            raise ValueError(f"node kinds {sorted(k.value for k in missing)} were not captured by this JointPatcher "
                             f"(kinds={[k.value for k in self.kinds]}); create it with kinds including them")
        return node_set

    def effects(self, nodes, sets, progress: bool = False, desc: str = "joint patching") -> Tensor:
        """(sets, pairs) float64: the effect of patching each set jointly on each pair.

        ``sets``: a list of 1-D index tensors into ``nodes`` or a (sets, len(nodes)) bool tensor.
        An empty set has effect 0 and costs nothing. A node at a position a short prompt lacks
        (right-aligned pairs of different lengths) is left out of that pair's patch."""
        node_set = self.nodes(nodes)
        members = _membership(sets, len(node_set))
        start = time.perf_counter()
        out = torch.zeros(members.shape[0], len(self.pairs), dtype=torch.float64)
        total = members.shape[0] * len(self.pairs)
        bar = tqdm(total=total, desc=desc, unit="patch", disable=not progress, leave=False)
        for runs in self.groups:
            self._group(runs, node_set, members, out, bar)
        bar.close()
        self.stats["seconds"] += time.perf_counter() - start
        return out

    def _group(self, runs: GroupRuns, nodes: NodeSet, members: Tensor, out: Tensor, bar) -> None:
        model, group = self.model, runs.group
        n_group, n_tok = group.clean.shape
        own_pos = nodes.pos - group.offset
        present = members & (own_pos >= 0)  # nodes this group's prompts have
        # sets sorted by their lowest (position, layer): a batch then skips what all its rows share
        key = torch.where(present, own_pos * model.n_layers + nodes.layer, torch.iinfo(torch.long).max).amin(1)
        order = torch.argsort(key, stable=True)
        row_set, row_pair = order.repeat_interleave(n_group), torch.arange(n_group).repeat(len(order))
        size = self.batch_size or auto_batch_size(model, n_tok, self.memory_mb)
        for lo in range(0, len(row_set), size):
            sets, pair = row_set[lo:lo + size], row_pair[lo:lo + size]
            entry_row, entry_node = present[sets].nonzero(as_tuple=True)
            value, cost = patched_metric(model, runs, nodes, own_pos, entry_node, entry_row, pair, self.metric, joint=True)
            out[sets, group.index[pair]] = (value - runs.base[pair]).double().cpu()
            self.stats["forward_passes"] += len(sets) if len(entry_node) else 0
            self.stats["forward_equivalents"] += cost
            self.stats["patched_rows"] += len(sets)
            bar.update(len(sets))


def _membership(sets, n_nodes: int) -> Tensor:
    """(sets, nodes) bool from a bool matrix or a list of index tensors (range-checked)."""
    if isinstance(sets, Tensor) and sets.dtype == torch.bool:
        if sets.ndim != 2 or sets.shape[1] != n_nodes:
            raise ValueError(f"membership matrix must be (sets, {n_nodes}) bool, got {tuple(sets.shape)}")
        return sets
    sets = list(sets)
    if not sets:
        raise ValueError("no node sets given: pass at least one set of node indices")
    members = torch.zeros(len(sets), n_nodes, dtype=torch.bool)
    for i, idx in enumerate(sets):
        idx = torch.as_tensor(idx, dtype=torch.long)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n_nodes):
            raise IndexError(f"node set {i} has indices outside 0..{n_nodes - 1}")
        members[i, idx] = True
    return members


def joint_patch(model, pairs: PromptPairs, nodes, sets, metric=None, batch_size: int | None = None,
                memory_mb: float = 1024, progress: bool = False) -> Tensor:
    """(sets, pairs) effects of patching each node set jointly; see :class:`JointPatcher`."""
    node_set = NodeSet.parse(model, nodes, pairs.max_len)
    patcher = JointPatcher(model, pairs, node_set.kinds, metric, batch_size, memory_mb)
    return patcher.effects(node_set, sets, progress=progress)


def clean_base(groups, n_pairs: int) -> Tensor:
    """(pairs,) clean metric gathered from per-length groups of captured runs (``runs.group.index``, ``runs.base``)."""
    out = torch.empty(n_pairs, dtype=torch.float64)
    for runs in groups:
        out[runs.group.index] = runs.base.double().cpu()
    return out
