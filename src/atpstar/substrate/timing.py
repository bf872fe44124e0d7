"""The measured cost of a backward pass in forward passes (:class:`atpstar.cost.Cost` converts with it)."""

from __future__ import annotations

import time

import torch

from .capture import Intervention, run


def measure_backward_ratio(model, input_ids: torch.Tensor, repeats: int = 5) -> float:
    """Median over ``repeats`` of (time of forward+backward − time of forward with grad) / time of a
    no-grad forward, on ``input_ids`` (batch, pos). The first run of each is a discarded warm-up."""
    def forward():
        with torch.no_grad():
            run(model, input_ids)

    def forward_grad(backward: bool):
        hooks = Intervention(model, grad=True)
        with torch.enable_grad():
            out = run(model, input_ids, hooks).float().logsumexp(-1).sum()
            if backward:
                out.backward()

    ratios = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        forward()
        t1 = time.perf_counter()
        forward_grad(False)
        t2 = time.perf_counter()
        forward_grad(True)
        t3 = time.perf_counter()
        if i:
            ratios.append(((t3 - t2) - (t2 - t1)) / (t1 - t0))
    return float(torch.tensor(ratios).median())
