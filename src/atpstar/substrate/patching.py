"""Patched forward passes shared by every exact method: one clean/noise capture per length group,
then batches whose rows each overwrite any number of nodes with their noise values.

A batch is given as *entries*: entry ``e`` puts node ``entry_node[e]``'s noise value into batch row
``entry_row[e]``; row ``r`` runs the clean prompt of pair ``row_pair[r]``. One entry per row is a
single-node patch (activation patching, verification); many entries per row patch a node set
jointly (subsampling, blocks, hierarchical, the diagnostic). Each batch computes only the blocks
from its lowest patched layer (below: the clean residual stream) and the positions from its lowest
patched position (before: the clean keys/values, as causal attention allows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .capture import Intervention, MaskPatch, Patch, node_index, run
from ..nodes import NodeSet
from ..types import ALL_KINDS, RESID, NodeKind

LAYER_SPAN = 4
"""In acp with a fixed ``batch_size`` (and in :mod:`atpstar.substrate.node_patcher`) a batch never mixes positions, nor
layers from different spans of this many layers; automatic batches follow the cost model instead."""


@dataclass
class GroupRuns:
    """Clean and noise captures of one length group, and the clean metric per pair."""

    group: object
    clean: dict
    """{(layer, site): tensor} of the clean run: node sites, keys/values and the residual stream."""
    noise: dict
    """{(layer, site): tensor} of the noise run: node sites."""
    base: Tensor
    """(G,) clean metric per pair of the group."""

    @classmethod
    def capture(cls, model, group, kinds, metric) -> "GroupRuns":
        sites = {NodeKind(k).value for k in kinds}
        with torch.no_grad():
            clean = Intervention(model, capture=frozenset({RESID, "k", "v", *sites}))
            base = metric(run(model, group.clean, clean), group.pairs)
            noise = Intervention(model, capture=frozenset(sites))
            run(model, group.noise, noise)
        return cls(group, clean.cache, noise.cache, base)


def patched_metric(model, runs: GroupRuns, nodes: NodeSet, own_pos: Tensor, entry_node: Tensor, entry_row: Tensor,
                   row_pair: Tensor, metric, joint: bool = False) -> tuple[Tensor, float]:
    """Metric of one batch of rows (row ``r``: pair ``row_pair[r]`` with its entries patched).

    ``own_pos`` maps every node of ``nodes`` to a position in this group's prompts. ``joint``: rows
    hold many entries (node sets), applied as masks over whole sites instead of indexed writes.
    Returns the metric per row and the cost in full forward passes (fractional: skipped layers and
    positions)."""
    group, n_layers = runs.group, model.n_layers
    n_tok = group.clean.shape[1]
    if len(entry_node) == 0:  # nothing patched anywhere: the clean metric, no forward pass
        return runs.base[row_pair], 0.0
    layer0 = int(nodes.layer[entry_node].min())
    pos0 = int(own_pos[entry_node].min())
    if joint:
        patches = _mask_patches(model, nodes, own_pos, entry_node, entry_row, row_pair, runs, pos0)
    else:
        patches = _patches(nodes, own_pos, entry_node, entry_row, row_pair[entry_row], runs.noise, pos0)
    start = runs.clean[(layer0, RESID)][row_pair, pos0:].contiguous() if layer0 else None
    prefix = tuple([runs.clean[(l, s)][row_pair, :, :pos0] for l in range(n_layers)] for s in ("k", "v"))
    hooks = Intervention(model, patches=patches, skip_below=layer0, start=start)
    with torch.no_grad():
        value = metric(run(model, group.clean[row_pair], hooks, prefix=prefix), group.pairs.select(row_pair))
    return value, len(row_pair) * (n_layers - layer0) * (n_tok - pos0) / (n_layers * n_tok)


def _patches(nodes: NodeSet, own_pos: Tensor, entry_node: Tensor, entry_row: Tensor, entry_pair: Tensor,
             noise_cache: dict, pos0: int) -> dict:
    """One Patch per (layer, kind) site touched by the entries, values from the noise run.

    Only positions >= ``pos0`` are computed: q/head/neuron sites hold that window, k/v sites hold
    all positions (the cached prefix plus the window)."""
    patches = {}
    site_key = nodes.kind[entry_node] * 10_000 + nodes.layer[entry_node]
    for key in site_key.unique().tolist():
        kind, layer = ALL_KINDS[key // 10_000], key % 10_000
        sel = (site_key == key).nonzero().flatten()
        n = entry_node[sel]
        unit, pos = nodes.unit[n], own_pos[n]
        values = noise_cache[(layer, kind.value)][node_index(kind, entry_pair[sel], unit, pos)]
        shift = 0 if kind in (NodeKind.K, NodeKind.V) else pos0
        patches[(layer, kind)] = Patch(rows=entry_row[sel], units=unit, pos=pos - shift, values=values)
    return patches


def _mask_patches(model, nodes: NodeSet, own_pos: Tensor, entry_node: Tensor, entry_row: Tensor, row_pair: Tensor,
                  runs: GroupRuns, pos0: int) -> dict:
    """One MaskPatch per (layer, kind) site touched by the entries: a (rows, units, pos) mask per site."""
    patches = {}
    n_rows, n_tok = len(row_pair), runs.group.clean.shape[1]
    kind_of = nodes.kind[entry_node]
    for kind_i in kind_of.unique().tolist():
        kind = ALL_KINDS[kind_i]
        sel = entry_node[kind_of == kind_i]
        shift = 0 if kind in (NodeKind.K, NodeKind.V) else pos0
        mask = torch.zeros(n_rows, model.n_layers, model.units(kind), n_tok - shift, dtype=torch.bool)
        mask[entry_row[kind_of == kind_i], nodes.layer[sel], nodes.unit[sel], own_pos[sel] - shift] = True
        for layer in nodes.layer[sel].unique().tolist():
            source = runs.noise[(layer, kind.value)]
            patches[(layer, kind)] = MaskPatch(mask[:, layer], source, row_pair.to(source.device), shift)
    return patches


def moved(model, runs: GroupRuns, nodes: NodeSet, own_pos: Tensor, node_idx: Tensor, pair_idx: Tensor) -> Tensor:
    """(jobs,) True where the node's noise value differs from its clean value on that pair."""
    out = torch.zeros(len(node_idx), dtype=torch.bool)
    for kind, sel, index in by_kind(nodes, own_pos, node_idx, pair_idx):
        site = kind.value
        differs = torch.stack([_differs(kind, runs.clean[(l, site)], runs.noise[(l, site)])
                               for l in range(model.n_layers)], 1)
        out[sel] = differs[index]
    return out


def _differs(kind, clean: Tensor, noise: Tensor) -> Tensor:
    """(G, units, pos) bool from a site tensor in its native layout."""
    if kind is NodeKind.NEURON:
        return (clean != noise).transpose(1, 2).cpu()
    return (clean != noise).any(-1).cpu()


def by_kind(nodes: NodeSet, own_pos: Tensor, node_idx: Tensor, pair_idx: Tensor):
    """For each node kind among the jobs: (kind, job mask, index tuple into a (G, layers, units, T) tensor)."""
    kind_of = nodes.kind[node_idx]
    for kind_i in kind_of.unique().tolist():
        sel = kind_of == kind_i
        n = node_idx[sel]
        yield ALL_KINDS[kind_i], sel, (pair_idx[sel], nodes.layer[n], nodes.unit[n], own_pos[n])


def bucket_slices(bucket: Tensor, size: int) -> list[slice]:
    """Slices of at most ``size`` consecutive jobs that never cross a change of ``bucket`` (sorted)."""
    change = (torch.nonzero(bucket[1:] != bucket[:-1]).flatten() + 1).tolist()
    out = []
    for lo, hi in zip([0, *change], [*change, len(bucket)]):
        out.extend(slice(a, min(a + size, hi)) for a in range(lo, hi, size))
    return out


def auto_batch_size(model, n_tok: int, memory_mb: float) -> int:
    """Rows per patched forward so that activations of one block plus the logits fit ``memory_mb``."""
    width = 6 * model.d_model + 3 * model.d_mlp + 2 * model.n_heads * n_tok + 4 * model.n_heads * model.d_head
    per_row = (n_tok * width + model.vocab_size) * torch.finfo(model.dtype).bits // 8
    return int(max(1, min(1024, memory_mb * 2**20 // (2 * per_row))))


def check_batch_size(batch_size) -> None:
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer (patches per forward pass) or None for automatic, "
                         f"got {batch_size!r}")
