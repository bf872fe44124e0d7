"""How exact single-node patches are grouped into forward passes: memory-sized, cost-aware batches.

A batch of patched rows computes only the blocks from its lowest patched layer and the positions
from its lowest patched position (:func:`atpstar.substrate.patching.patched_metric`), so its time is about

    f(pos0, layer0) · (a + b · rows),   f(p, l) = (L − l)(T − p) / (L · T)

where ``a`` is the fixed cost of one forward pass (weights streamed once, kernel launches) and ``b``
the cost of one more row. :func:`plan_batches` walks the jobs in (position, layer) order and adds
the next (position, layer) cell to the open batch only while that is cheaper than starting a new
one: dense node sets get full batches within a few layers, sparse sets get batches that start near
all of their patches instead of one tiny forward per position and layer span. ``a / b``
(:func:`overhead_ratio`) is 1 on CPUs (measured 1.15 for SmolLM2 on one thread), so that CPU runs
batch, and round, identically every time; on a GPU, where it ranges from ~1 (large models, long
prompts) to hundreds, it is measured once per model, prompt length and device. The largest batch
follows the device's free memory (:func:`memory_budget_mb`).
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

_RATIOS: dict = {}


def free_memory_mb(device) -> float:
    """Free memory of ``device`` in MB: CUDA's free memory, else the RAM available to processes."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**20
    import psutil

    return psutil.virtual_memory().available / 2**20


def memory_budget_mb(device, fraction: float = 0.25, cap_mb: float = 16384) -> float:
    """Memory one patched batch may use: ``fraction`` of the free memory, at most ``cap_mb``."""
    return max(16.0, min(cap_mb, fraction * free_memory_mb(device)))


CPU_OVERHEAD = 1.0
"""``a / b`` used on CPUs (a constant keeps batch plans, hence float rounding, reproducible)."""


def overhead_ratio(model, input_ids: Tensor, rows: int = 8, measure: bool | None = None) -> float:
    """``a / b``: fixed cost of a forward pass over the cost of one row. Measured (``measure``, default:
    on GPUs) from a no-grad forward of 1 and of ``rows`` copies of ``input_ids`` (T,), best of two each,
    cached per model, T and device; else :data:`CPU_OVERHEAD`."""
    from .capture import run

    if not (model.device.type != "cpu" if measure is None else measure):
        return CPU_OVERHEAD
    key = (id(model.hf), int(input_ids.shape[-1]), str(model.device), rows)
    if key not in _RATIOS:
        def seconds(n: int) -> float:
            best = float("inf")
            for _ in range(2):
                _sync(model.device)
                start = time.perf_counter()
                with torch.no_grad():
                    run(model, input_ids.expand(n, -1))
                _sync(model.device)
                best = min(best, time.perf_counter() - start)
            return best

        one, many = seconds(1), seconds(rows)
        per_row = max((many - one) / (rows - 1), 1e-9)
        _RATIOS[key] = float(min(max((one - per_row) / per_row, 0.0), 1e4))
    return _RATIOS[key]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def plan_batches(pos: Tensor, layer: Tensor, n_layers: int, n_tok: int, max_rows: int, overhead: float) -> list[slice]:
    """Slices of consecutive jobs forming batches. ``pos``/``layer``: each job's position and layer,
    sorted by (position, layer); ``overhead`` = a / b. Loops over distinct (position, layer) cells only."""
    if len(pos) == 0:
        return []
    key = pos * n_layers + layer
    change = (torch.nonzero(key[1:] != key[:-1]).flatten() + 1).tolist()
    starts, ends = [0, *change], [*change, len(pos)]
    cells = zip(pos[starts].tolist(), layer[starts].tolist(), starts, ends)
    frac = lambda p, l: (n_layers - l) * (n_tok - p) / (n_layers * n_tok)  # noqa: E731
    out, open_ = [], None  # open_: [first job, p0, l0, rows]
    for p, l, lo, hi in cells:
        while lo < hi:
            if open_ is None:
                take = min(hi - lo, max_rows)
                open_ = [lo, p, l, take]
            else:
                take = min(hi - lo, max_rows - open_[3])
                first, p0, l0, rows = open_
                merged = frac(min(p0, p), min(l0, l)) * (overhead + rows + take)
                split = frac(p0, l0) * (overhead + rows) + frac(p, l) * (overhead + take)
                if merged > split:
                    out.append(slice(first, first + rows))
                    open_ = None
                    continue
                open_ = [first, min(p0, p), min(l0, l), rows + take]
            lo += take
            if open_[3] >= max_rows:
                out.append(slice(open_[0], open_[0] + open_[3]))
                open_ = None
    if open_ is not None:
        out.append(slice(open_[0], open_[0] + open_[3]))
    return out


def max_rows(model, n_tok: int, memory_mb: float) -> int:
    """Rows per batch that fit ``memory_mb`` (activations of one block plus the logits per row)."""
    from .patching import auto_batch_size

    return auto_batch_size(model, n_tok, memory_mb)


__all__ = ["free_memory_mb", "max_rows", "memory_budget_mb", "overhead_ratio", "plan_batches"]
