"""Exact truth for MLP neurons at **every** position, on a sample of layers and units.

A neuron patched at an early position changes every later position, so each patch recomputes the
sequence from that position on: far dearer than the final-position subset (see docs/study.md for
the measured patch rates). The study therefore patches ``units`` randomly chosen neurons (a fresh
sample per layer, fixed seed) of ``layers`` layers spread evenly over the depth, at every aligned
position, on every pair. Saved as ``truth_<prefix><task>_neuronpos.npz``: float32 per-pair effects
(P, layers, units, T), the sampled layers and units, the pairs and the run time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import atpstar
from atpstar import NodeKind, NodeSet, PromptPairs
from atpstar.nodes import KIND_INDEX

from .truth import ROOT, pair_arrays, pair_meta, pairs_from

GROUP = "neuron_pos"


@dataclass
class PosTruth:
    """Per-pair exact effects ``effects`` (P, len(layers), units per layer, T) of the sampled neurons."""

    task: str
    pairs: PromptPairs
    effects: np.ndarray
    layers: np.ndarray
    units: np.ndarray
    seconds: dict

    def subset(self, idx) -> "PosTruth":
        idx = list(idx)
        return PosTruth(self.task, self.pairs.select(idx), self.effects[idx], self.layers, self.units, self.seconds)


def sample(model, n_layers: int, n_units: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_layers`` layers evenly spread from the first to the last; ``n_units`` random units of each."""
    layers = np.unique(np.linspace(0, model.n_layers - 1, n_layers).round().astype(int))
    rng = np.random.default_rng(seed)
    units = np.stack([np.sort(rng.choice(model.d_mlp, n_units, replace=False)) for _ in layers])
    return layers, units


def nodes(layers: np.ndarray, units: np.ndarray, n_pos: int) -> NodeSet:
    """Every sampled neuron at every aligned position, ordered layer, unit, position."""
    n_units = units.shape[1]
    layer = torch.as_tensor(layers).repeat_interleave(n_units * n_pos)
    unit = torch.as_tensor(units).flatten().repeat_interleave(n_pos)
    pos = torch.arange(n_pos).repeat(len(layers) * n_units)
    return NodeSet(torch.full_like(layer, KIND_INDEX[NodeKind.NEURON]), layer, unit, pos)


def path_for(task: str, root: Path = ROOT, prefix: str = "") -> Path:
    return root / f"truth_{prefix}{task}_neuronpos.npz"


def compute(model, task: str, pairs: PromptPairs, layers, units, root: Path = ROOT, prefix: str = "",
            progress: bool = True) -> PosTruth:
    """Exact per-pair effects of the sampled neurons (resumable acp checkpoint), saved to ``path_for``."""
    t0 = time.perf_counter()
    node_set = nodes(layers, units, pairs.max_len)
    exact = atpstar.acp(model, pairs, nodes=node_set, per_pair=True, progress=progress,
                        checkpoint=root / "ckpt" / f"{prefix}{task}_neuronpos.ckpt")
    table = exact.per_pair[NodeKind.NEURON]  # (P, L, d_mlp, T)
    effects = table[:, torch.as_tensor(layers)[:, None], torch.as_tensor(units)].numpy().astype(np.float32)
    seconds = {"neurons_all_positions": time.perf_counter() - t0, "patches": int(exact.info["patches"])}
    truth = PosTruth(task, pairs, effects, np.asarray(layers), np.asarray(units), seconds)
    save(truth, path_for(task, root, prefix))
    return truth


def save(truth: PosTruth, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"task": truth.task, "seconds": truth.seconds, **pair_meta(truth.pairs)}
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), effects=truth.effects, layers=truth.layers,
                        units=truth.units, **pair_arrays(truth.pairs))


def load(task: str, root: Path = ROOT, prefix: str = "") -> PosTruth:
    with np.load(path_for(task, root, prefix)) as data:
        meta = json.loads(str(data["meta"]))
        return PosTruth(meta["task"], pairs_from(data, meta), data["effects"], data["layers"], data["units"],
                        meta["seconds"])
