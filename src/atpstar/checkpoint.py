"""Resumable long runs: finished per-pair results saved atomically, reloaded on the next call.

A checkpoint file belongs to one run, identified by a fingerprint of the model, the prompt
pairs, the node set and the metric; reusing it for a different run is refused.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import torch

from .types import NodeKind


def fingerprint(model, pairs, nodes, metric) -> str:
    """Identity of a run over a node set: model, prompt pairs, nodes and metric."""
    tensors = () if nodes is None else (nodes.kind, nodes.layer, nodes.unit, nodes.pos)
    digest = hashlib.sha256()
    digest.update(f"{model.name}|{model.n_layers}|{model.d_model}|{model.vocab_size}|{metric.name}".encode())
    for tensor in (*pairs.clean, *pairs.noise, pairs.answer, pairs.distractor, *tensors):
        digest.update(tensor.numpy().tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def run_key(model, pairs, metric) -> str:
    """Identity of (model, pairs, metric), whatever the nodes: results keyed by it may be reused by any
    node set (verification caches, the diagnostic's check that a verified set belongs to the run)."""
    return fingerprint(model, pairs, None, metric)


class Checkpoint:
    """``{group: {kind: tensor}}`` of partial results; NaN entries are still to do."""

    def __init__(self, path, key: str, every: float = 60.0):
        self.path, self.key, self.every = Path(path) if path else None, key, every
        self.groups: dict = {}
        self.saved_at = time.monotonic()
        if self.path is not None and self.path.exists():
            state = load_checked(self.path)
            if state.get("key") != key:
                raise ValueError(
                    f"checkpoint {self.path} belongs to a different run (model, pairs, nodes or metric differ); "
                    "delete it or pass another checkpoint path"
                )
            self.groups = state.get("groups", {})

    @property
    def resumed(self) -> int:
        return sum(int(t.isfinite().sum()) for g in self.groups.values() for t in g.values())

    def get(self, group: int):
        saved = self.groups.get(group)
        return None if saved is None else {NodeKind(k): v for k, v in saved.items()}

    def update(self, group: int, results: dict, force: bool = False) -> None:
        if self.path is None:
            return
        self.groups[group] = {NodeKind(k).value: v for k, v in results.items()}  # plain keys: weights_only load
        if force or time.monotonic() - self.saved_at >= self.every:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
            torch.save({"key": self.key, "groups": self.groups}, tmp)
            os.replace(tmp, self.path)  # atomic: a crash never leaves a half-written checkpoint
            self.saved_at = time.monotonic()


def load_checked(path) -> dict:
    """A checkpoint's saved state; a file that is not one (corrupted, truncated, some other file) raises
    a ValueError saying so and how to start over, instead of torch's unpickling error."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on the damage
        raise ValueError(f"{path} is not a valid atpstar checkpoint (corrupted or truncated: {type(err).__name__}); "
                         "delete it to start over") from err
    if not isinstance(state, dict) or "key" not in state:
        raise ValueError(f"{path} is not a valid atpstar checkpoint (no saved results in it); delete it to start over")
    return state
