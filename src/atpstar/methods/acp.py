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

from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..capture import Intervention, Patch, node_index, run
from ..checkpoint import Checkpoint, fingerprint
from ..metrics import Metric, resolve
from ..nodes import NodeSet
from ..pairs import PromptPairs
from ..scores import Accumulator, Scores
from ..types import ALL_KINDS, RESID, NodeKind


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
    metric = resolve(metric, pairs)
    pairs.check_vocab(model.vocab_size)
    n_pos = pairs.max_len
    node_set = NodeSet.every(model, kinds, n_pos) if nodes is None else NodeSet.parse(model, nodes, n_pos)
    ckpt = Checkpoint(checkpoint, fingerprint(model, pairs, node_set, metric), checkpoint_every)
    patcher = _Patcher(model, metric, node_set, batch_size, memory_mb, ckpt)
    acc = Accumulator(model, node_set.kinds, len(pairs), n_pos, keep_per_pair=per_pair)
    total = sum(int((node_set.pos >= g.offset).sum()) * len(g.index) for g in pairs.groups())
    patcher.bar = tqdm(total=total, desc="activation patching", unit="patch", disable=not progress, leave=False)
    with torch.no_grad():
        for i, group in enumerate(pairs.groups()):
            for kind, eff in patcher.group(i, group).items():
                acc.add(kind, group, eff)
    patcher.bar.close()
    return acc.finish("acp", score="abs_mean", info={"metric": metric.name, **patcher.stats, "resumed": ckpt.resumed})


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
        clean = Intervention(model, capture=frozenset({RESID, "k", "v", *(k.value for k in kinds)}))
        base = self.metric(run(model, group.clean, clean), group.pairs)
        noise = Intervention(model, capture=frozenset(k.value for k in kinds))
        run(model, group.noise, noise)
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
        moved = _moved(model, nodes, own_pos, job_node, job_pair, clean.cache, noise.cache)
        _scatter(effects, nodes, own_pos, job_node[~moved], job_pair[~moved], torch.zeros(int((~moved).sum()), dtype=torch.float64))
        self.stats["skipped_identical"] += int((~moved).sum())
        self.bar.update(int((~moved).sum()))
        job_node, job_pair = job_node[moved], job_pair[moved]
        size = self.batch_size or auto_batch_size(model, n_tok, self.memory_mb)
        for rows in _batches(own_pos[job_node] * model.n_layers + nodes.layer[job_node] // LAYER_SPAN, size):
            rows_node, rows_pair = job_node[rows], job_pair[rows]
            value, cost = _patched_metric(model, group, nodes, own_pos, rows_node, rows_pair, clean.cache, noise.cache, self.metric)
            _scatter(effects, nodes, own_pos, rows_node, rows_pair, (value - base[rows_pair]).double().cpu())
            self._count(len(rows_node), len(rows_node) * cost)
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


def _batches(bucket: Tensor, size: int) -> list[slice]:
    """Slices of at most ``size`` consecutive jobs that never cross a change of ``bucket`` (sorted)."""
    change = (torch.nonzero(bucket[1:] != bucket[:-1]).flatten() + 1).tolist()
    out = []
    for lo, hi in zip([0, *change], [*change, len(bucket)]):
        out.extend(slice(a, min(a + size, hi)) for a in range(lo, hi, size))
    return out


def _patched_metric(model, group, nodes, own_pos, rows_node, rows_pair, clean: dict, noise: dict, metric):
    """Metric of one batch of single-node patches, computing only blocks >= the lowest patched layer
    and positions >= the lowest patched position (earlier positions are the clean run's: causal
    attention). Returns the values and the cost as a fraction of a full forward pass."""
    layer0 = int(nodes.layer[rows_node].min())
    pos0 = int(own_pos[rows_node].min())
    patches = _patches(nodes, own_pos, rows_node, rows_pair, noise, pos0)
    start = clean[(layer0, RESID)][rows_pair, pos0:].contiguous() if layer0 else None
    prefix = tuple([clean[(l, s)][rows_pair, :, :pos0] for l in range(model.n_layers)] for s in ("k", "v"))
    hooks = Intervention(model, patches=patches, skip_below=layer0, start=start)
    value = metric(run(model, group.clean[rows_pair], hooks, prefix=prefix), group.pairs.select(rows_pair))
    n_layers, n_tok = model.n_layers, group.clean.shape[1]
    return value, (n_layers - layer0) * (n_tok - pos0) / (n_layers * n_tok)


def _by_kind(nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor):
    """For each node kind in the jobs: (kind, job mask, index tuple into its (G, layers, units, T) tensor)."""
    kind_of = nodes.kind[rows_node]
    for kind_i in kind_of.unique().tolist():
        sel = kind_of == kind_i
        n = rows_node[sel]
        yield ALL_KINDS[kind_i], sel, (rows_pair[sel], nodes.layer[n], nodes.unit[n], own_pos[n])


def _scatter(effects: dict, nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor, delta: Tensor) -> None:
    for kind, sel, index in _by_kind(nodes, own_pos, rows_node, rows_pair):
        effects[kind][index] = delta[sel]


def _gather(effects: dict, nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor) -> Tensor:
    out = torch.full((len(rows_node),), float("nan"), dtype=torch.float64)
    for kind, sel, index in _by_kind(nodes, own_pos, rows_node, rows_pair):
        out[sel] = effects[kind][index]
    return out


def _moved(model, nodes: NodeSet, own_pos: Tensor, job_node: Tensor, job_pair: Tensor, clean: dict, noise: dict) -> Tensor:
    """(jobs,) True where the node's noise value differs from its clean value."""
    moved = torch.zeros(len(job_node), dtype=torch.bool)
    for kind, sel, index in _by_kind(nodes, own_pos, job_node, job_pair):
        site = kind.value
        differs = torch.stack([_differs(kind, clean[(l, site)], noise[(l, site)]) for l in range(model.n_layers)], 1)
        moved[sel] = differs[index]
    return moved


def _differs(kind, clean: Tensor, noise: Tensor) -> Tensor:
    """(G, units, pos) bool from a site tensor in its native layout."""
    if kind is NodeKind.NEURON:
        return (clean != noise).transpose(1, 2).cpu()
    return (clean != noise).any(-1).cpu()


def _patches(nodes: NodeSet, own_pos: Tensor, rows_node: Tensor, rows_pair: Tensor, noise_cache: dict, pos0: int) -> dict:
    """One Patch per (layer, kind) site touched by this batch, values from the noise run.

    Only positions >= ``pos0`` are computed: q/head/neuron sites hold that window, k/v sites hold
    all positions (the cached prefix plus the window)."""
    patches = {}
    site_key = nodes.kind[rows_node] * 10_000 + nodes.layer[rows_node]
    for key in site_key.unique().tolist():
        kind, layer = ALL_KINDS[key // 10_000], key % 10_000
        sel = (site_key == key).nonzero().flatten()
        n = rows_node[sel]
        unit, pos = nodes.unit[n], own_pos[n]
        values = noise_cache[(layer, kind.value)][node_index(kind, rows_pair[sel], unit, pos)]
        shift = 0 if kind in (NodeKind.K, NodeKind.V) else pos0
        patches[(layer, kind)] = Patch(rows=sel, units=unit, pos=pos - shift, values=values)
    return patches


def auto_batch_size(model, n_tok: int, memory_mb: float) -> int:
    """Rows per patched forward so that activations of one block plus the logits fit ``memory_mb``."""
    width = 6 * model.d_model + 3 * model.d_mlp + 2 * model.n_heads * n_tok + 4 * model.n_heads * model.d_head
    per_row = (n_tok * width + model.vocab_size) * torch.finfo(model.dtype).bits // 8
    return int(max(1, min(1024, memory_mb * 2**20 // (2 * per_row))))
