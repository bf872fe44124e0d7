"""Stop rules for :func:`atpstar.verify`: when to stop verifying a ranking, of nodes or edges alike (so
it lives with the vocabulary).

A rule is any callable ``rule(state) -> str | None``: ``state`` is the partial
:class:`~atpstar.verification.Verification` (nodes verified so far, in rank order, with exact effects);
a returned string is the reason to stop. :func:`~atpstar.verification.verify` calls it after each chunk
of nodes, so a plain rule stops at a chunk boundary. A rule may also define
``check(state, start) -> (n, reason) | None``, vectorised over the nodes from index ``start`` on
(the ones verified since the last call), returning the exact number ``n`` of verified nodes at
which it first holds: verification then records that stop point exactly even though the rest of
the chunk was already paid for (and is kept).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SmallEffects:
    """Stop once the last ``window`` verified nodes all had a small exact effect.

    Small means ``|mean effect| < threshold`` (absolute) or ``|mean effect| < relative × M`` where
    ``M`` is the largest |mean effect| verified so far (up to and including the newest node). Give
    either or both; with both, a node is small when it is below either cutoff (the larger one). A
    node absent from every pair (NaN effect) counts as effect 0. With ``relative`` alone the rule
    never fires while every effect found is exactly 0.
    """

    window: int
    threshold: float | None = None
    relative: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.window, int) or isinstance(self.window, bool) or self.window < 1:
            raise ValueError(f"SmallEffects window must be a positive integer (nodes), got {self.window!r}")
        if self.threshold is None and self.relative is None:
            raise ValueError("SmallEffects needs threshold= (absolute |effect|) or relative= (fraction of the "
                             "largest |effect| so far), or both")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"SmallEffects threshold must be > 0, got {self.threshold!r}")
        if self.relative is not None and not 0 < self.relative <= 1:
            raise ValueError(f"SmallEffects relative must be in (0, 1], got {self.relative!r}")

    def check(self, state, start: int = 0):
        """``(n, reason)``: the first prefix length ``n > start`` after which the rule holds, or None."""
        size = torch.nan_to_num(state.effect.abs(), nan=0.0)
        w, total = self.window, len(size)
        first = max(start, w - 1)  # index of the newest node of the first window to test
        if first >= total:
            return None
        window_max = size[first - w + 1:].unfold(0, w, 1).amax(1)  # max |effect| of the window ending at i
        cutoff = torch.zeros_like(window_max)
        if self.threshold is not None:
            cutoff = cutoff.clamp(min=self.threshold)
        if self.relative is not None:
            cutoff = torch.maximum(cutoff, self.relative * torch.cummax(size, 0).values[first:])
        hit = (window_max < cutoff).nonzero()
        if len(hit) == 0:
            return None
        n = first + int(hit[0]) + 1
        return n, f"small effects: the last {w} verified nodes (ranks {n - w}..{n - 1}) all had |effect| < {self._describe()}"

    def __call__(self, state) -> str | None:
        found = self.check(state, 0)
        return None if found is None else found[1]

    def _describe(self) -> str:
        parts = ([f"{self.threshold:g}"] if self.threshold is not None else []) + \
                ([f"{self.relative:g} x the largest |effect| so far"] if self.relative is not None else [])
        return " or ".join(parts)


def first_stop(rules, state, start: int):
    """``(n, reason)`` of the rule that fires first (by prefix length; ties: the first listed), or None."""
    best = None
    for rule in rules:
        if hasattr(rule, "check"):
            found = rule.check(state, start)
        else:
            reason = rule(state)
            found = None if reason is None else (len(state), str(reason) or f"stop rule {type(rule).__name__}")
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    return best


def as_rules(stop) -> list:
    """None, one rule or a list of rules -> a list of callables."""
    rules = [] if stop is None else list(stop) if isinstance(stop, (list, tuple)) else [stop]
    for rule in rules:
        if not callable(rule):
            raise TypeError(f"a stop rule must be callable(state) -> str | None (e.g. SmallEffects(window=20, "
                            f"relative=0.01)), got {type(rule).__name__}")
    return rules
