"""Many processes: split prompt pairs (or any work list) among ``torch.distributed`` ranks, then reduce.

Launch the same script once per process with ``torchrun`` and call :func:`init` first::

    torchrun --nproc_per_node 2 my_run.py        # CPU: gloo; one GPU per process: nccl

    import atpstar
    device = atpstar.distributed.init()        # process group from torchrun's environment
    model = atpstar.load_model("default", device=device)
    scores = atpstar.atp(model, pairs)         # each rank estimates its share of the pairs; all ranks
                                               # get the reduced result, equal to one process's

Without a process group (a plain ``python`` run) every function here is the single-process identity:
rank 0 of 1. :func:`atpstar.atp` and :func:`atpstar.acp` divide the pairs of every length group
among the ranks (:func:`shard_group`) and all-reduce their sums and counts before averaging, so the
result is the one-process result up to the order of floating-point additions.

The small API for other methods: :func:`rank`, :func:`world`, :func:`shard` (this rank's share of
a list of indices), :func:`all_reduce` (a tensor, summed in place), :func:`all_reduce_rows` (a table
whose rows each rank filled for its own share, NaN elsewhere) and :func:`all_reduce_scores`.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def init(backend: str | None = None) -> torch.device:
    """Join the process group described by torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``...), if any and not done yet. Returns this process's device: ``cuda:LOCAL_RANK``
    when CUDA is available, else the CPU. Backend: nccl with CUDA, gloo otherwise."""
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def shard(indices) -> Tensor:
    """This rank's share of ``indices`` (a sequence or 1-D tensor): every ``world()``-th item from
    position ``rank()``, so shares differ in size by at most one and keep the original order."""
    indices = torch.as_tensor(indices, dtype=torch.long) if not isinstance(indices, Tensor) else indices
    return indices[rank()::world()]


def shard_group(group):
    """This rank's pairs of one :class:`~atpstar.pairs.LengthGroup`, keeping their global pair indices
    and position offset (results land where one process would put them); None if it has none."""
    if not active():
        return group
    rows = shard(torch.arange(len(group.index)))
    if len(rows) == 0:
        return None
    return type(group)(group.index[rows], group.clean[rows], group.noise[rows], group.pairs.select(rows), group.offset)


def rank_path(path):
    """A per-rank variant of a file path (e.g. checkpoints): unchanged in a single process."""
    if path is None or not active():
        return path
    return f"{path}.rank{rank()}of{world()}"


def _backend_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(tensor: Tensor, op: str = "sum") -> Tensor:
    """Sum (or ``"max"``/``"min"``) ``tensor`` over all ranks, in place; returns it. CPU tensors are
    carried to the GPU and back under nccl. Identity in a single process."""
    if not active():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    device = _backend_device()
    work = tensor if tensor.device == device else tensor.to(device)
    dist.all_reduce(work, op=ops[op])
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def all_reduce_rows(table: Tensor) -> Tensor:
    """Combine a table whose entries each rank filled for its own share and left NaN elsewhere (e.g.
    per-pair effects): every entry takes the value of the rank that has one. In place; returns it."""
    if not active():
        return table
    present = table.isfinite().to(table.dtype)
    all_reduce(present)
    if bool((present > 1).any()):
        raise RuntimeError("all_reduce_rows: an entry was filled by more than one rank; shard the rows first")
    all_reduce(table.nan_to_num_(0.0))
    return table.masked_fill_(present == 0, float("nan"))


def all_reduce_scores(scores, weight: float | None = None):
    """Average :class:`~atpstar.scores.Scores` computed by each rank on its own pairs: each node's
    ``effect``, ``mean_abs`` and ``score`` become the mean over ranks weighted by ``weight`` (default:
    the rank's ``n_pairs``) among the ranks that have a value there. Exact for means over equal-length
    pairs; :func:`atpstar.atp`/:func:`atpstar.acp` reduce their raw sums instead (exact always)."""
    if not active():
        return scores
    w = float(scores.n_pairs if weight is None else weight)
    for name in ("effect", "mean_abs", "score"):
        table = getattr(scores, name)
        for kind in list(table):
            value = table[kind].double()
            has = value.isfinite().double()
            total, mass = all_reduce(value.nan_to_num(0.0) * w * has), all_reduce(has * w)
            table[kind] = (total / mass.where(mass > 0, torch.nan)).to(table[kind].dtype)
    n = torch.tensor([float(scores.n_pairs)])
    scores.n_pairs = int(all_reduce(n).item())
    return scores


__all__ = ["active", "all_reduce", "all_reduce_rows", "all_reduce_scores", "init", "is_main", "rank", "rank_path",
           "shard", "shard_group", "world"]
