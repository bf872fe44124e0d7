"""The store of verified nodes behind :func:`atpstar.verify`: exact per-pair effects (and what each
node cost) keyed by node, for one run (model, prompt pairs, metric: ``checkpoint.run_key``).

Filled from a checkpoint file and from a previous :class:`~atpstar.verification.Verification` (``prior=``),
looked up before patching so no node is patched twice, and saved atomically (every ``every``
seconds and when verification ends, also when it is interrupted) so a rerun resumes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import Tensor

from ..checkpoint import load_checked

FORMAT = "atpstar.verify/1"
FIELDS = ("ids", "per_pair", "cost", "seconds")


class VerifiedStore:
    """Rows ``ids`` (sorted node ids), ``per_pair`` (n, pairs) float64, ``cost`` / ``seconds`` (n,):
    forward-pass equivalents and seconds spent patching each node (all pairs together)."""

    def __init__(self, path, key: str, n_pairs: int, every: float = 60.0):
        self.path, self.key, self.every = (Path(path) if path else None), key, every
        self.old = {"ids": torch.zeros(0, dtype=torch.long), "per_pair": torch.zeros(0, n_pairs, dtype=torch.float64),
                    "cost": torch.zeros(0, dtype=torch.float64), "seconds": torch.zeros(0, dtype=torch.float64)}
        self.new: list[dict] = []
        self.capture_seconds: float | None = None
        self.saved_at = time.monotonic()
        if self.path is not None and self.path.exists():
            state = load_checked(self.path)
            if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("key") != key:
                raise ValueError(f"checkpoint {self.path} belongs to a different run (another model, prompt pairs or "
                                 "metric, or not a verification checkpoint); delete it or pass another checkpoint path")
            self.merge(**{f: state[f] for f in FIELDS})
            self.capture_seconds = state.get("capture_seconds")

    def __len__(self) -> int:
        return len(self.old["ids"]) + sum(len(n["ids"]) for n in self.new)

    def merge(self, ids: Tensor, per_pair: Tensor, cost: Tensor, seconds: Tensor) -> None:
        """Add rows to the looked-up part (a node already present keeps its first value)."""
        rows = {"ids": ids.long(), "per_pair": per_pair.double(), "cost": cost.double(), "seconds": seconds.double()}
        both = {f: torch.cat([self.old[f], rows[f]]) for f in FIELDS}
        sorted_ids, order = torch.sort(both["ids"], stable=True)
        first = torch.ones(len(order), dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        self.old = {f: both[f][order[first]] for f in FIELDS}

    def lookup(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        """(hit, row): which of ``ids`` are stored, and their row in :attr:`old` (valid where hit)."""
        stored = self.old["ids"]
        row = torch.searchsorted(stored, ids).clamp(max=max(len(stored) - 1, 0))
        hit = stored[row] == ids if len(stored) else torch.zeros(len(ids), dtype=torch.bool)
        return hit, row

    def commit(self, ids: Tensor, per_pair: Tensor, cost: Tensor, seconds: Tensor) -> None:
        """Record newly verified nodes (saved by the next :meth:`save`)."""
        if len(ids):
            self.new.append({"ids": ids, "per_pair": per_pair, "cost": cost, "seconds": seconds})
            self.dirty = True

    dirty = False

    def save(self, force: bool = False) -> None:
        if self.path is None or not self.dirty or (not force and time.monotonic() - self.saved_at < self.every):
            return
        rows = {f: torch.cat([self.old[f], *(n[f] for n in self.new)]) for f in FIELDS}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        torch.save({"format": FORMAT, "key": self.key, "capture_seconds": self.capture_seconds, **rows}, tmp)
        os.replace(tmp, self.path)  # atomic: a crash never leaves a half-written checkpoint
        self.saved_at, self.dirty = time.monotonic(), False
