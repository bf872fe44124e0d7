"""The measured cost of a backward pass in forward passes (:class:`atpstar.cost.Cost` converts with it)."""

from __future__ import annotations

import time

import torch

from .capture import Intervention, run


MIN_RATIO = 0.05
"""A floor for the measured ratio: a backward pass is never free, whatever a busy machine's clock says."""


def measure_backward_ratio(model, input_ids: torch.Tensor, repeats: int = 5) -> float:
    """(time of forward+backward − time of forward with grad) / time of a no-grad forward on ``input_ids``
    (batch, pos), each time the **fastest** of ``repeats`` runs after a discarded warm-up: the minimum is
    what the work costs; anything above it is other jobs on a shared machine (as ``timeit`` reasons).
    Never below :data:`MIN_RATIO`."""
    def forward():
        with torch.no_grad():
            run(model, input_ids)

    def forward_grad(backward: bool):
        hooks = Intervention(model, grad=True)
        with torch.enable_grad():
            out = run(model, input_ids, hooks).float().logsumexp(-1).sum()
            if backward:
                out.backward()

    best = [float("inf")] * 3
    for i in range(repeats + 1):
        times = [time.perf_counter()]
        for work in (forward, lambda: forward_grad(False), lambda: forward_grad(True)):
            work()
            times.append(time.perf_counter())
        if i:
            best = [min(b, end - start) for b, start, end in zip(best, times, times[1:])]
    plain, with_grad, with_backward = best
    return max(MIN_RATIO, (with_backward - with_grad) / plain)
