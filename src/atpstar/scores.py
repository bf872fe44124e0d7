"""The result of every method: per-node effects and ranking scores, with a tidy table view.

Tensors are indexed ``[layer, unit, pos]`` per node kind (``pos`` = aligned position, see
:mod:`atpstar.pairs`). ``NaN`` marks a node that was not computed (a node subset was asked for)
or that exists for no pair (a position before a short prompt's first token).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from .types import ALL_KINDS, NodeKind


@dataclass
class Scores:
    unit_kind: ClassVar[str] = "node"
    """The unit kind (:mod:`atpstar.units`)."""

    method: str
    effect: dict
    """{kind: (layers, units, pos)} signed mean over pairs of the (estimated) effect I(n)."""
    score: dict
    """{kind: (layers, units, pos)} ranking score: |mean effect| for exact patching, the method's score otherwise."""
    n_pairs: int
    mean_abs: dict = field(default_factory=dict)
    """{kind: (layers, units, pos)} mean over pairs of |effect| (large when effects are large but of varying sign)."""
    per_pair: dict | None = None
    """{kind: (pairs, layers, units, pos)} per-pair effects, when asked for (``per_pair=True``)."""
    info: dict = field(default_factory=dict)
    """Cost accounting, options and the clean metric."""

    @property
    def kinds(self) -> list[NodeKind]:
        return [k for k in ALL_KINDS if k in self.effect]

    def to_frame(self, kinds=None, dropna: bool = True):
        """pandas DataFrame, one row per node: kind, layer, unit, pos, name, effect, mean_abs, score (sorted by score)."""
        import pandas as pd

        frames = []
        for kind in NodeKind.parse(kinds) if kinds is not None else self.kinds:
            eff, sc = self.effect[kind], self.score[kind]
            layer, unit, pos = (t.flatten() for t in torch.meshgrid(*(torch.arange(n) for n in eff.shape), indexing="ij"))
            frames.append(pd.DataFrame({
                "kind": kind.value, "layer": layer.numpy(), "unit": unit.numpy(), "pos": pos.numpy(),
                "effect": eff.flatten().double().numpy(), "mean_abs": self.mean_abs[kind].flatten().double().numpy(),
                "score": sc.flatten().double().numpy(),
            }))
        df = pd.concat(frames, ignore_index=True)
        if dropna:
            df = df[df["score"].notna()]
        df = df.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)
        letter = df["kind"].map({k.value: k.unit_letter for k in ALL_KINDS})
        df.insert(4, "name", "L" + df["layer"].astype(str) + "." + df["kind"] + "." + letter
                  + df["unit"].astype(str) + "@" + df["pos"].astype(str))  # == Node.name, vectorised
        return df

    def top(self, k: int = 20, kinds=None):
        """The ``k`` best nodes as a table (see :meth:`to_frame`); ``top(0)`` is an empty table."""
        return self.to_frame(kinds).head(check_top(k))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k.value}: {int(self.score[k].isfinite().sum())}" for k in self.kinds)
        return f"Scores({self.method}, {self.n_pairs} pairs, nodes {sizes})"


class Accumulator:
    """Sums per-pair tensors of one length group at a time into pair-averaged Scores (memory: O(nodes))."""

    def __init__(self, model, kinds, n_pairs: int, max_len: int, keep_per_pair: bool = False):
        self.shapes = {k: (model.n_layers, model.units(k), max_len) for k in NodeKind.parse(kinds)}
        zeros = lambda: {k: torch.zeros(s, dtype=torch.float64) for k, s in self.shapes.items()}  # noqa: E731
        self.sum, self.abs_sum, self.term_sum, self.count = zeros(), zeros(), zeros(), zeros()
        self.per_pair = None
        if keep_per_pair:
            self.per_pair = {k: torch.full((n_pairs, *s), float("nan")) for k, s in self.shapes.items()}
        self.n_pairs = n_pairs
        self.max_len = max_len

    def add(self, kind: NodeKind, group, effect: Tensor, score_term: Tensor | None = None) -> None:
        """``effect`` (and ``score_term``): (G, layers, units, T_group); NaN = not computed."""
        offset = group.offset
        t = effect.shape[-1]
        effect = effect.detach().to("cpu", torch.float64)
        present = effect.isfinite()
        self.sum[kind][..., offset:offset + t] += effect.nan_to_num().sum(0)
        self.abs_sum[kind][..., offset:offset + t] += effect.abs().nan_to_num().sum(0)
        if score_term is not None:  # a method's own score (AtP / GradDrop terms)
            self.term_sum[kind][..., offset:offset + t] += score_term.detach().to("cpu", torch.float64).nan_to_num().sum(0)
        self.count[kind][..., offset:offset + t] += present.sum(0)
        if self.per_pair is not None:
            self.per_pair[kind][group.index, ..., offset:offset + t] = effect.float()

    def all_reduce(self) -> None:
        """Sum the accumulated pairs of every ``torch.distributed`` rank (identity in one process)."""
        from .distributed import all_reduce, all_reduce_rows

        for store in (self.sum, self.abs_sum, self.term_sum, self.count):
            for tensor in store.values():
                all_reduce(tensor)
        for table in (self.per_pair or {}).values():
            all_reduce_rows(table)

    def finish(self, method: str, score: str = "abs_mean", info: dict | None = None) -> Scores:
        """score='abs_mean': |mean effect| (ground truth c(n)); 'mean_abs': mean of the score terms."""
        effect, scores, mean_abs = {}, {}, {}
        for kind in self.shapes:
            count = self.count[kind]
            mean = lambda total: torch.where(count > 0, total / count.clamp(min=1), torch.nan)  # noqa: E731
            effect[kind] = mean(self.sum[kind])
            mean_abs[kind] = mean(self.abs_sum[kind])
            scores[kind] = effect[kind].abs() if score == "abs_mean" else mean(self.term_sum[kind])
        return Scores(method, effect, scores, self.n_pairs, mean_abs, self.per_pair, info or {})


class LayerAccumulator:
    """Pair-summed results filled one layer at a time, for estimators that see every node of every pair.

    Storage is float32 (float64 for float64 models): one ``(layers, units, pos)`` tensor per kind for
    the signed sum, the absolute sum and the score terms (the last two shared when the score is
    mean |Î|). The tensors are allocated empty and each layer is zeroed when first written, so memory
    pages are touched layer by layer, as the backward pass frees the activations of the same layers.
    Tensors are added from any device and accumulate on ``device`` (CPU by default)."""

    def __init__(self, model, kinds, n_pairs: int, max_len: int, keep_per_pair: bool = False,
                 separate_terms: bool = True, device="cpu"):
        self.dtype = torch.promote_types(model.dtype, torch.float32)
        self.shapes = {k: (model.n_layers, model.units(k), max_len) for k in NodeKind.parse(kinds)}
        empty = lambda: {k: torch.empty(s, dtype=self.dtype, device=device) for k, s in self.shapes.items()}  # noqa: E731
        self.sum, self.abs_sum = empty(), empty()
        self.term_sum = empty() if separate_terms else self.abs_sum
        self.count = torch.zeros(max_len, dtype=self.dtype, device=device)
        self.started = {k: [False] * s[0] for k, s in self.shapes.items()}
        self.per_pair = None
        if keep_per_pair:
            self.per_pair = {k: torch.full((n_pairs, *s), float("nan")) for k, s in self.shapes.items()}
        self.n_pairs, self.max_len, self.device = n_pairs, max_len, torch.device(device)

    def add_pairs(self, group) -> None:
        """Count the pairs of one (sub)group: every one of its nodes gets a value."""
        self.count[group.offset:] += len(group.index)

    def add_effect(self, kind: NodeKind, layer: int, group, effect: Tensor) -> Tensor:
        """Signed per-pair estimates ``effect`` (G, units, T_group) of one layer; returns Σ_pairs |effect|
        (units, T_group) on the accumulation device."""
        self._start(kind, layer)
        window = slice(group.offset, group.offset + effect.shape[-1])
        effect = effect.detach()
        self.sum[kind][layer, :, window] += effect.sum(0).to(self.device, self.dtype)
        abs_sum = effect.abs().sum(0).to(self.device, self.dtype)
        self.abs_sum[kind][layer, :, window] += abs_sum
        if self.per_pair is not None:
            self.per_pair[kind][group.index, layer, :, window] = effect.to("cpu", torch.float32)
        return abs_sum

    def add_terms(self, kind: NodeKind, layer: int, group, term_sum: Tensor) -> None:
        """Score terms of one layer, already summed over the group's pairs: (units, T_group)."""
        self._start(kind, layer)
        window = slice(group.offset, group.offset + term_sum.shape[-1])
        self.term_sum[kind][layer, :, window] += term_sum.to(self.device, self.dtype)

    def _start(self, kind: NodeKind, layer: int) -> None:
        if not self.started[kind][layer]:
            for store in {id(s): s for s in (self.sum, self.abs_sum, self.term_sum)}.values():
                store[kind][layer].zero_()
            self.started[kind][layer] = True

    def all_reduce(self) -> None:
        """Sum the accumulated pairs of every ``torch.distributed`` rank (identity in one process)."""
        from .distributed import all_reduce, all_reduce_rows

        self._start_all()
        stores = [self.sum, self.abs_sum] + ([self.term_sum] if self.term_sum is not self.abs_sum else [])
        for store in stores:
            for tensor in store.values():
                all_reduce(tensor)
        all_reduce(self.count)
        for table in (self.per_pair or {}).values():
            all_reduce_rows(table)

    def _start_all(self) -> None:
        for kind in self.shapes:
            for layer in range(self.shapes[kind][0]):
                self._start(kind, layer)

    def finish(self, method: str, info: dict | None = None) -> Scores:
        """Means over pairs, computed in place: effect = signed mean, mean_abs, score = mean score term."""
        self._start_all()
        count = self.count.where(self.count > 0, torch.nan)
        effect, scores, mean_abs = {}, {}, {}
        for kind in self.shapes:
            effect[kind] = self.sum[kind].div_(count)
            mean_abs[kind] = self.abs_sum[kind].div_(count)
            scores[kind] = self.term_sum[kind].div_(count) if self.term_sum is not self.abs_sum else mean_abs[kind]
        return Scores(method, effect, scores, self.n_pairs, mean_abs, self.per_pair, info or {})


def check_top(k, what: str = "k") -> int:
    """``k`` for "the k best": an integer >= 0, else a ValueError saying what to pass."""
    import numbers

    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise ValueError(f"{what}={k!r}: pass the number of best units to keep, an integer >= 0 (e.g. {what}=20); "
                         "to_frame() gives them all")
    return int(k)
