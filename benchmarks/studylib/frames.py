"""Node universes of the study and the exact truth over them as tidy frames.

Three node groups: ``attn`` (every q, k, v, head node at every layer and aligned position), ``neuron``
(every MLP neuron at the final position) and ``neuron_pos`` (sampled neurons at every position, see
:mod:`.neuronpos`); the subsets are documented in docs/study.md. Settings: each single prompt pair,
and the distribution of all the task's pairs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from atpstar import NodeKind, NodeSet
from atpstar.nodes import KIND_INDEX
from atpstar.types import ALL_KINDS

from . import neuronpos
from .truth import ATTN, Truth, neuron_nodes

KEY = ["kind", "layer", "unit", "pos"]
GROUPS = ("attn", "neuron")  # the groups of truth.Truth; neuronpos.GROUP has its own truth file


def settings(truth: Truth) -> list[tuple[str, Truth]]:
    """("pair0", ...), one per single pair, then ("dist", all pairs) when there are several."""
    out = [(f"pair{i}", truth.subset([i])) for i in range(len(truth.pairs))]
    return out + [("dist", truth)] if len(truth.pairs) > 1 else out


def universe(model, truth: Truth, group: str) -> NodeSet:
    """The nodes of a group at the setting's aligned positions (right-aligned to its longest pair)."""
    n_pos = truth.pairs.max_len
    if group == "neuron":
        return neuron_nodes(model, n_pos)
    if group == neuronpos.GROUP:
        return neuronpos.nodes(truth.layers, truth.units, n_pos)
    return NodeSet.every(model, "attn", n_pos)


def truth_frame(model, truth: Truth, group: str) -> pd.DataFrame:
    """One row per node of the group: kind/layer/unit/pos, exact mean ``effect`` and ``score`` = |effect|.

    Per-pair effects are saved on each task's full aligned length; a single pair shorter than the
    longest lacks the first positions (NaN): those nodes are dropped from that setting."""
    nodes = universe(model, truth, group)
    per_pair = per_pair_effects(truth, nodes, group)  # (P, N)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nodes no pair has: NaN, dropped below
        effect = np.nanmean(per_pair, axis=0)
    frame = node_frame(nodes)
    frame["effect"] = effect
    frame["score"] = np.abs(effect)
    return frame[np.isfinite(frame["effect"])].reset_index(drop=True)


def per_pair_effects(truth: Truth, nodes: NodeSet, group: str) -> np.ndarray:
    """(P, N) exact per-pair effects of ``nodes`` (NaN where a pair lacks the position)."""
    layer, unit, pos = nodes.layer.numpy(), nodes.unit.numpy(), nodes.pos.numpy()
    if group == "neuron":
        return truth.neuron[:, layer, unit]
    if group == neuronpos.GROUP:  # saved on the task's full length, right-aligned; nodes ordered as saved
        effects = truth.effects[..., truth.effects.shape[-1] - truth.pairs.max_len:]
        return effects.reshape(len(truth.pairs), -1).astype(np.float64)
    out = np.full((len(truth.pairs), len(nodes)), np.nan, dtype=np.float64)
    kind = nodes.kind.numpy()
    for name in ATTN:
        sel = kind == KIND_INDEX[NodeKind(name)]
        table = truth.attn[name]
        t_saved = table.shape[-1]
        out[:, sel] = table[:, layer[sel], unit[sel], pos[sel] - (truth.pairs.max_len - t_saved)]
    return out


def node_frame(nodes: NodeSet) -> pd.DataFrame:
    names = np.array([k.value for k in ALL_KINDS])
    return pd.DataFrame({"kind": names[nodes.kind.numpy()], "layer": nodes.layer.numpy(),
                         "unit": nodes.unit.numpy(), "pos": nodes.pos.numpy()})


def restrict(ranking: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The ranking's rows over the truth's nodes, in the ranking's order (missing nodes appended last)."""
    merged = truth[KEY].merge(ranking[KEY + ["score"]].assign(_order=np.arange(len(ranking))), on=KEY, how="left")
    merged["score"] = merged["score"].fillna(-np.inf)
    merged["_order"] = merged["_order"].fillna(np.inf)
    return merged.sort_values(["_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def kinds_of(group: str) -> list[str]:
    return list(ATTN) if group == "attn" else ["neuron"]


def subsets(group: str, truth: pd.DataFrame) -> dict:
    """{label: the truth rows scored separately}: every node, then per attention kind, or for neurons at
    every position the ones before the final position (where GradDrop's cancellation can matter)."""
    out = {"all": truth}
    if group == "attn":
        out.update({kind: truth[truth["kind"] == kind] for kind in ATTN})
    if group == neuronpos.GROUP:
        out["earlier"] = truth[truth["pos"] < truth["pos"].max()]
    return out


__all__ = ["GROUPS", "KEY", "kinds_of", "node_frame", "restrict", "settings", "subsets", "truth_frame", "universe"]
