"""Metrics: a scalar per prompt computed from the model's output.

A metric maps ``(logits, pairs)`` to one value per row, where ``logits`` is (rows, vocab) at each
prompt's last position (or (rows, pos, vocab) when ``last_only=False``) and ``pairs`` holds the
rows' prompt pairs (answers, distractors). Built in: ``"logit_diff"`` (answer − distractor) and
``"logprob"`` (log-probability of the answer). Any callable with that signature works too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable
    last_only: bool = True
    """True: ``fn`` receives last-position logits (rows, vocab), which lets the model skip the
    unembedding of every other position. False: full (rows, pos, vocab) logits."""

    def __call__(self, logits: Tensor, pairs) -> Tensor:
        value = self.fn(logits, pairs)
        if not isinstance(value, Tensor) or value.shape != (logits.shape[0],):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"metric {self.name!r} must return a tensor of shape ({logits.shape[0]},), got {got}")
        bad = ~torch.isfinite(value)
        if bad.any():
            rows = bad.nonzero().flatten()[:5].tolist()
            raise FloatingPointError(
                f"metric {self.name!r} is not finite (NaN/inf) for rows {rows}: check the answer/distractor "
                "token ids and the metric function; a NaN metric would corrupt every effect"
            )
        return value


def _rows(logits: Tensor) -> Tensor:
    return torch.arange(logits.shape[0], device=logits.device)


def logit_diff(logits: Tensor, pairs) -> Tensor:
    """logit(answer) − logit(distractor) at the last position."""
    if (pairs.distractor < 0).any():
        raise ValueError("metric 'logit_diff' needs a distractor token for every pair; use metric='logprob' instead")
    rows = _rows(logits)
    return logits[rows, pairs.answer.to(logits.device)] - logits[rows, pairs.distractor.to(logits.device)]


def logprob(logits: Tensor, pairs) -> Tensor:
    """log p(answer) at the last position."""
    return torch.log_softmax(logits.float(), dim=-1)[_rows(logits), pairs.answer.to(logits.device)]


BUILTIN = {"logit_diff": Metric("logit_diff", logit_diff), "logprob": Metric("logprob", logprob)}


def resolve(metric, pairs=None) -> Metric:
    """Turn a name, a callable, a Metric or None (the pairs' own metric, else a sensible default) into a Metric."""
    if metric is None and pairs is not None:
        metric = pairs.metric
    if metric is None:
        has_distractor = pairs is not None and bool((pairs.distractor >= 0).all())
        metric = "logit_diff" if has_distractor else "logprob"
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in BUILTIN:
            raise ValueError(f"unknown metric {metric!r}; use one of {sorted(BUILTIN)} or a callable(logits, pairs)")
        return BUILTIN[metric]
    if callable(metric):
        return Metric(getattr(metric, "__name__", "custom"), metric)
    raise TypeError(f"metric must be a name, a callable or a Metric, got {type(metric).__name__}")
