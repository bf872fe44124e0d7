"""Faithfulness of circuits: how much of the behaviour a circuit alone carries.

For a circuit C (a set of edges) the clean prompt is run with every reader reading, per incoming
edge, the writer's output of this run when the edge is in C and the writer's output on the noise
prompt otherwise (:mod:`.mixture`). ``m(C)`` is the metric of that run, and

    f(C) = (m(C) − m(∅)) / (m(full) − m(∅))

with the metric averaged over the pairs before the ratio (as the MIB benchmark does); ``m(∅)`` is
the noise run's metric and ``m(full)`` the clean run's (the evaluator gives exactly those for the
empty and the full circuit). Per-pair faithfulness is available on request.

A circuit is a (W, R) boolean mask over the edge graph (position-free: the edge is in C at every
position), a (W, R, T) mask over aligned positions, or edge names (``"L0.head.H1 -> L2.q.H0"``
position-free, ``"L0.head.H1@3 -> L2.q.H0@3"`` per position). :func:`node_circuit` makes the
circuit of a set of writers (every writer outside takes its noise value). One forward pass per pair
per circuit; rows of many circuits and pairs share batched passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..cost import Cost
from ..metrics import resolve
from ..pairs import PromptPairs, check_pairs
from ..substrate.capture import run
from ..substrate.patching import auto_batch_size, check_batch_size
from ..edges.graph import EdgeGraph
from ..edges.writes import capture_writes
from .circuit import as_circuits
from .mixture import MixedRun, outside_mask


class FaithfulnessUndefined(ValueError):
    """m(full) = m(∅): the metric does not tell the clean run from the noise run."""


@dataclass
class Faithfulness:
    """Metric of each circuit on each pair, and the clean / noise references."""

    metric: Tensor
    """(C, P) float64 metric of each circuit's run on each pair."""
    clean: Tensor
    """(P,) float64 metric of the clean run, m(full)."""
    noise: Tensor
    """(P,) float64 metric of the noise run, m(∅)."""
    metric_name: str = ""
    info: dict = field(default_factory=dict)

    @property
    def m(self) -> Tensor:
        """(C,) metric averaged over pairs."""
        return self.metric.mean(1)

    @property
    def f(self) -> Tensor:
        """(C,) faithfulness, the metric averaged over pairs before the ratio."""
        full, empty = float(self.clean.mean()), float(self.noise.mean())
        if full == empty:
            raise FaithfulnessUndefined(
                f"faithfulness is undefined: metric {self.metric_name!r} averages {full:.6g} on both the clean "
                "(full circuit) and the noise (empty circuit) runs; use pairs whose clean and noise prompts the metric "
                "tells apart, or another metric")
        return (self.m - empty) / (full - empty)

    def per_pair(self) -> Tensor:
        """(C, P) faithfulness of each pair (NaN where that pair's m(full) = m(∅))."""
        span = self.clean - self.noise
        return (self.metric - self.noise) / span.where(span != 0, torch.nan)


def faithfulness(model, pairs: PromptPairs, circuits, metric=None, graph: EdgeGraph | None = None,
                 batch_size: int | None = None, memory_mb: float = 1024) -> Faithfulness:
    """Evaluate one circuit or a list of circuits (see the module doc for the forms) on every pair.

    Returns :class:`Faithfulness`: ``.f`` (C,), ``.m`` (C,), ``.per_pair()`` (C, P), ``.clean`` and
    ``.noise`` (P,); ``info["cost"]`` counts one forward pass per circuit and pair plus the clean and
    noise runs."""
    check_batch_size(batch_size)
    start = time.perf_counter()
    result = References(model, pairs, metric, graph, keep=False).evaluate(circuits, batch_size, memory_mb)
    n, n_circuits = len(pairs), result.info["circuits"]
    cost = Cost(forward=float(n * (n_circuits + 2)), pairs=n, seconds=time.perf_counter() - start)
    result.info = {"cost": cost, "circuits": n_circuits}
    return result


class References:
    """The clean and noise runs of every pair: per length group its noise run's writes, and the (P,) clean and
    noise metrics. With ``keep`` they are run once, at the first evaluation, and kept for every later one (a
    search over many rounds of circuits); without, each evaluation runs them group by group, holding one
    group's noise writes at a time."""

    def __init__(self, model, pairs: PromptPairs, metric=None, graph: EdgeGraph | None = None, keep: bool = True):
        check_pairs(pairs)
        pairs.check_vocab(model.vocab_size)
        self.model, self.pairs, self.metric = model, pairs, resolve(metric, pairs)
        self.graph = EdgeGraph.resolve(model, graph)
        self.keep = keep
        self._kept: list | None = None  # (group, (P_group, W, T, d) noise writes) per length group

    def _groups(self):
        """(group, its noise writes) per length group, run on the way unless kept from an earlier call."""
        if self._kept is not None:
            yield from self._kept
            return
        model, graph, metric = self.model, self.graph, self.metric
        self.clean = torch.zeros(len(self.pairs), dtype=torch.float64)
        self.noise = torch.zeros(len(self.pairs), dtype=torch.float64)
        kept = []
        for group in self.pairs.groups():
            with torch.no_grad():
                noise_w, _, noise_logits = capture_writes(model, graph, group.noise)
                clean_logits = run(model, group.clean)
            self.noise[group.index] = metric(noise_logits, group.pairs).double().cpu()
            self.clean[group.index] = metric(clean_logits, group.pairs).double().cpu()
            if self.keep:
                kept.append((group, noise_w))
            yield group, noise_w
            del noise_w  # without keep, one group's noise writes alive at a time
        if self.keep:
            self._kept = kept

    def evaluate(self, circuits, batch_size: int | None = None, memory_mb: float = 1024) -> Faithfulness:
        """:class:`Faithfulness` of ``circuits`` (no cost in ``info``: the caller knows what it ran)."""
        masks = as_circuits(self.graph, circuits, self.pairs.max_len)
        out = torch.zeros(len(masks), len(self.pairs), dtype=torch.float64)
        for group, noise_w in self._groups():
            self._evaluate_group(group, noise_w, masks, out, batch_size, memory_mb)
            del noise_w
        return Faithfulness(out, self.clean, self.noise, self.metric.name, {"circuits": len(masks)})

    def _evaluate_group(self, group, noise_w: Tensor, masks: Tensor, out: Tensor, batch_size, memory_mb) -> None:
        model, graph, metric = self.model, self.graph, self.metric
        n_group, n_tok = group.clean.shape
        if masks.ndim == 4:
            masks = masks[..., group.offset:]
        outside = outside_mask(graph, masks)
        rows = torch.arange(len(masks) * n_group)
        size = batch_size or _rows_per_batch(model, graph, n_tok, memory_mb)
        for lo in range(0, len(rows), size):
            batch = rows[lo:lo + size]
            which, pair = batch // n_group, batch % n_group
            hooks = MixedRun(model, graph=graph, noise=noise_w[pair], outside=outside[which].to(noise_w.device))
            with torch.no_grad():
                value = metric(run(model, group.clean[pair], hooks), group.pairs.select(pair))
            out[which, group.index[pair]] = value.double().cpu()


def _rows_per_batch(model, graph: EdgeGraph, n_tok: int, memory_mb: float) -> int:
    """The activations' share, and two copies of every writer's write per row (noise and this run's)."""
    writes = 2 * graph.n_writers * n_tok * model.d_model * torch.finfo(model.dtype).bits // 8
    return int(max(1, min(auto_batch_size(model, n_tok, memory_mb), memory_mb * 2**20 // max(1, writes))))
