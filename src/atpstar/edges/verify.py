"""Verify an edge ranking by exact edge patching (SPEC.md §7 and §11, with edges as the units).

:func:`verify_edges` patches the edges of a ranking one by one, best first, in chunks, until a
budget is spent or a stop rule fires, like :func:`atpstar.verify` does for nodes. The budget and stop
rules are the node pipeline's own objects, passed in (``atpstar.Budget``: ``forward``, ``seconds``,
``nodes`` = edges here; ``atpstar.SmallEffects`` or any rule with ``check(state, start)`` or
``rule(state) -> reason``, applied by the shared :func:`atpstar.stopping.first_stop`): this module
reads the budget's fields and never imports :mod:`atpstar.verify`, which sits above it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..checkpoint import run_key
from ..cost import Cost
from ..pairs import PromptPairs
from ..stopping import first_stop
from .edgeset import EdgeSet
from .graph import EdgeGraph
from .patching import EdgePatcher
from .scores import EdgeScores, edge_frame

CHUNK = 32
"""Edges patched per chunk (budgets and stop rules are checked between chunks; a stop rule's point is exact)."""


@dataclass
class EdgeVerification:
    """The first ``len(edges)`` edges of a ranking, verified by exact edge patching, in rank order."""

    graph: EdgeGraph
    edges: EdgeSet
    per_pair: Tensor
    """(V, pairs) float64 exact effect per pair (NaN: the position is absent from that pair)."""
    effect: Tensor
    """(V,) exact mean effect."""
    estimate: Tensor
    """(V,) the ranking's signed estimate."""
    score: Tensor
    """(V,) the ranking's score."""
    cost: Cost
    """Measured cost: the captures (clean and noise writes) plus every patch."""
    stopped: str
    """``"budget"``, ``"exhausted"`` or a stop rule's reason."""
    stop_index: int
    ranking: EdgeSet | None = None
    """Every edge the ranking scored, best first (the universe of the edge diagnostic)."""
    key: str | None = None
    """Identity of (model, pairs, metric) (:func:`atpstar.checkpoint.run_key`): whose edges these are."""
    model: object = field(default=None, repr=False, compare=False)
    pairs: object = field(default=None, repr=False, compare=False)
    metric: object = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.edges)

    @property
    def nodes(self) -> EdgeSet:
        """The verified units (for stop rules written for nodes, which read ``len(state.nodes)``)."""
        return self.edges

    def to_frame(self):
        """rank (1-based), the tidy edge columns (name, writer, reader, pos, ...), score, effect (the
        ranking's estimate) and ``effect_exact``."""
        frame = edge_frame(self.graph, self.edges, self.score, self.estimate)
        frame.insert(0, "rank", range(1, len(frame) + 1))
        frame["effect_exact"] = self.effect.numpy()
        return frame


def verify_edges(model, pairs: PromptPairs, scores: EdgeScores, budget=None, stop=None, metric=None,
                 batch_size: int | None = None, chunk: int = CHUNK, progress: bool = False) -> EdgeVerification:
    """Exact effects of the top of ``scores``' ranking, best first, within ``budget`` (an
    ``atpstar.Budget``; ``nodes`` counts edges) and until a ``stop`` rule fires (None: verify every
    edge the budget allows; no budget and no rule: every ranked edge)."""
    ranked = scores.ranked_ids()
    order = EdgeSet.from_ids(scores.graph, ranked, scores.n_pos)
    patcher = EdgePatcher(model, pairs, metric, scores.graph, batch_size)
    rules = [] if stop is None else list(stop) if isinstance(stop, (list, tuple)) else [stop]
    limit_n = getattr(budget, "nodes", None)
    limit_f = getattr(budget, "forward", None)
    limit_s = getattr(budget, "seconds", None)
    start, n_pairs = time.perf_counter(), len(pairs)
    parts: list[Tensor] = []
    done, stopped, stop_index = 0, "exhausted", None
    while done < len(order):
        room = len(order) - done
        if limit_n is not None:
            room = min(room, limit_n - done)
        if limit_f is not None:  # one patch costs at most one forward pass per pair
            room = min(room, math.floor(limit_f - patcher.stats["forward_equivalents"] / n_pairs + 1e-9))
        if limit_s is not None and time.perf_counter() - start >= limit_s:
            room = 0
        if room <= 0:
            stopped = "budget"
            break
        take = order.take(slice(done, done + min(chunk, room)))
        parts.append(patcher.single(take, progress))
        done += len(take)
        state = _state(scores, order, ranked, parts, patcher, n_pairs, start, "", done)
        ruled = time.perf_counter()
        found = first_stop(rules, state, done - len(take))
        start += time.perf_counter() - ruled  # a stop rule's own work (ThetaBelow's patches) is not verification's
        if found is not None:
            stop_index, stopped = found
            break
    n = done if stop_index is None else stop_index
    return _state(scores, order, ranked, parts, patcher, n_pairs, start, stopped, n, stop_index)


def _state(scores, order, ranked, parts, patcher, n_pairs, start, stopped, n, stop_index=None) -> EdgeVerification:
    per_pair = torch.cat(parts)[:n] if parts else torch.zeros(0, n_pairs, dtype=torch.float64)
    ids = ranked[:n]
    cost = Cost(forward=patcher.stats["forward_equivalents"], pairs=n_pairs, seconds=time.perf_counter() - start)
    return EdgeVerification(scores.graph, order.take(slice(0, n)), per_pair, per_pair.nanmean(1),
                            scores.effect.flatten()[ids].double(), scores.score.flatten()[ids].double(), cost,
                            stopped, n if stop_index is None else stop_index, order,
                            run_key(patcher.model, patcher.pairs, patcher.metric), patcher.model, patcher.pairs,
                            patcher.metric)
