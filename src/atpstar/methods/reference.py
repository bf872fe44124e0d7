"""Reference rankings for the cost-of-verified-recall study: a uniformly random order and the oracle.

- ``random`` (:func:`random_order`): every node of the scope gets an independent uniform score
  (seeded); no estimate (``effect`` NaN); cost 0.
- ``oracle`` (:func:`oracle`): ranks by the exact |mean effect| of a given ground truth (a
  :class:`~atpstar.scores.Scores` from :func:`atpstar.acp` on the same model and pairs). Its
  *ranking* cost is 0 (``info["cost"]``), so verifying its top k costs k per pair: the lower bound
  every method is compared with. Without ``truth`` it runs acp first; that cost is reported
  separately as ``info["truth_cost"]`` and is not part of the oracle's cost.
"""

from __future__ import annotations

import torch

from ..cost import Cost
from ..nodes import KIND_INDEX, NodeSet
from ..pairs import PromptPairs
from ..scores import Scores
from .acp import acp
from .common import gather, sorted_scope, to_scores


def random_order(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, progress: bool = True,
                 seed: int = 0) -> Scores:
    """A uniformly random ranking of the scope (``score`` uniform in [0, 1), seeded); cost 0."""
    node_set, _ = sorted_scope(model, pairs, kinds, nodes)
    score = torch.rand(len(node_set), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    info = {"seed": seed, "cost": Cost(pairs=len(pairs))}
    return to_scores("random", model, pairs, node_set, torch.full_like(score, torch.nan), score, info=info)


def oracle(model, pairs: PromptPairs, kinds=None, nodes=None, metric=None, truth: Scores | None = None,
           progress: bool = True, seed: int = 0) -> Scores:
    """The true order: nodes ranked by the exact |mean effect| of ``truth`` (computed by acp if None).

    With ``truth`` given and neither ``kinds`` nor ``nodes``, the scope is every node the truth has
    a value for. ``seed`` is unused (accepted for a uniform signature)."""
    truth_cost = None
    if truth is None:
        truth = acp(model, pairs, kinds=kinds, nodes=nodes, metric=metric, progress=progress)
        truth_cost = truth.info.get("cost")
    _check_truth(model, pairs, truth)
    if truth_cost is None and kinds is None and nodes is None:
        node_set = _known(truth)
    else:
        node_set, _ = sorted_scope(model, pairs, kinds, nodes)
    effect = gather(truth.effect, node_set) if all(k in truth.effect for k in node_set.kinds) else None
    if effect is None or effect.isnan().any():
        missing = len(node_set) if effect is None else int(effect.isnan().sum())
        raise ValueError(f"the truth has no exact effect for {missing} of the {len(node_set)} nodes to rank; "
                         "compute it with acp over the same nodes (or leave kinds/nodes out to rank the truth's own)")
    info = {"truth": truth.method, "cost": Cost(pairs=len(pairs)), "truth_cost": truth_cost}
    mean_abs = gather(truth.mean_abs, node_set) if truth.mean_abs else None
    return to_scores("oracle", model, pairs, node_set, effect, effect.abs(), mean_abs, info)


def _check_truth(model, pairs: PromptPairs, truth) -> None:
    if not isinstance(truth, Scores):
        raise TypeError(f"truth must be a Scores from atpstar.acp, got {type(truth).__name__}")
    if truth.n_pairs != len(pairs):
        raise ValueError(f"truth was computed on {truth.n_pairs} pairs but {len(pairs)} are given; use the same pairs")
    for kind, tensor in truth.effect.items():
        want = (model.n_layers, model.units(kind), pairs.max_len)
        if tuple(tensor.shape) != want:
            raise ValueError(f"truth's {kind.value} effects have shape {tuple(tensor.shape)}, but this model and these "
                             f"pairs have (layers, units, positions) = {want}; compute the truth on the same model and pairs")


def _known(truth: Scores) -> NodeSet:
    """Every node with a finite truth value."""
    parts = []
    for kind in truth.kinds:
        layer, unit, pos = truth.effect[kind].isfinite().nonzero(as_tuple=True)
        parts.append((torch.full_like(layer, KIND_INDEX[kind]), layer, unit, pos))
    cols = [torch.cat(c) for c in zip(*parts)] if parts else [torch.zeros(0, dtype=torch.long)] * 4
    if not len(cols[0]):
        raise ValueError("the truth has no finite effects: nothing to rank")
    return NodeSet(*cols)
