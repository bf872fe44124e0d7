"""Exact ground truth for the study: per-pair activation-patching effects, cached compressed on disk.

For each task: ``P`` prompt pairs; every attention node (q, k, v, head at every layer and position)
and the neuron subset (every MLP neuron of every layer at the **final position**, see docs/study.md
for why) patched exactly on every pair. Saved as ``benchmarks/results/study/truth_<task>.npz``
(float32 per-pair effects, the pairs' token ids and the run times), so the curves regenerate in
minutes. Long runs resume from acp checkpoints under ``benchmarks/results/study/ckpt/`` (ignored by git).
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

ROOT = Path("benchmarks/results/study")
ATTN = ("q", "k", "v", "head")


@dataclass
class Truth:
    """Exact per-pair effects of one task: ``attn[kind]`` (P, L, U, T), ``neuron`` (P, L, d_mlp) at pos T-1."""

    task: str
    pairs: PromptPairs
    attn: dict
    neuron: np.ndarray | None
    seconds: dict

    def per_pair(self, kind: str) -> np.ndarray:
        """(P, L, U, T) for attention kinds; (P, L, U, 1) for neurons (final position only)."""
        return self.attn[kind] if kind in ATTN else self.neuron[..., None]

    def subset(self, idx) -> "Truth":
        """The truth of a sub-distribution (pairs ``idx``)."""
        idx = list(idx)
        neuron = None if self.neuron is None else self.neuron[idx]
        return Truth(self.task, self.pairs.select(idx), {k: v[idx] for k, v in self.attn.items()}, neuron, self.seconds)


def neuron_nodes(model, n_pos: int) -> NodeSet:
    """Every neuron of every layer at the final aligned position."""
    layer, unit = torch.meshgrid(torch.arange(model.n_layers), torch.arange(model.d_mlp), indexing="ij")
    n = layer.numel()
    return NodeSet(torch.full((n,), KIND_INDEX[NodeKind.NEURON]), layer.flatten(), unit.flatten(),
                   torch.full((n,), n_pos - 1))


def path_for(task: str, root: Path = ROOT, prefix: str = "") -> Path:
    """``truth_<prefix><task>.npz``; the prefix names the model (none for the default model)."""
    return root / f"truth_{prefix}{task}.npz"


def compute(model, task: str, pairs: PromptPairs, neurons: bool = True, root: Path = ROOT,
            layers: range | None = None, progress: bool = True, prefix: str = "") -> Truth:
    """Exact per-pair effects (resumable through acp checkpoints), saved to ``path_for(task, root, prefix)``."""
    ckpt = root / "ckpt"
    seconds = {}
    t0 = time.perf_counter()
    nodes = NodeSet.every(model, "attn", pairs.max_len)
    if layers is not None:
        nodes = nodes.take(torch.isin(nodes.layer, torch.tensor(list(layers))))
    exact = atpstar.acp(model, pairs, nodes=nodes, per_pair=True, progress=progress, checkpoint=ckpt / f"{prefix}{task}_attn.ckpt")
    seconds["attention"] = time.perf_counter() - t0
    attn = {k: exact.per_pair[NodeKind(k)].numpy().astype(np.float32) for k in ATTN}
    neuron = None
    if neurons:
        t0 = time.perf_counter()
        exact_n = atpstar.acp(model, pairs, nodes=neuron_nodes(model, pairs.max_len), per_pair=True,
                              progress=progress, checkpoint=ckpt / f"{prefix}{task}_neuron.ckpt")
        seconds["neurons"] = time.perf_counter() - t0
        neuron = exact_n.per_pair[NodeKind.NEURON][..., -1].numpy().astype(np.float32)
    truth = Truth(task, pairs, attn, neuron, seconds)
    save(truth, path_for(task, root, prefix))
    return truth


def pair_arrays(pairs: PromptPairs) -> dict:
    """The pairs as arrays for ``np.savez`` (token ids per pair, answers, distractors)."""
    arrays = {"answer": pairs.answer.numpy(), "distractor": pairs.distractor.numpy()}
    for i, (c, x) in enumerate(zip(pairs.clean, pairs.noise)):
        arrays[f"clean_{i}"], arrays[f"noise_{i}"] = c.numpy(), x.numpy()
    return arrays


def pair_meta(pairs: PromptPairs) -> dict:
    return {"n_pairs": len(pairs), "metric": pairs.metric if isinstance(pairs.metric, str) else None,
            "texts": [list(t) for t in pairs.texts]}


def pairs_from(data, meta: dict) -> PromptPairs:
    n = meta["n_pairs"]
    return PromptPairs.from_ids([data[f"clean_{i}"].tolist() for i in range(n)],
                                [data[f"noise_{i}"].tolist() for i in range(n)],
                                data["answer"].tolist(), data["distractor"].tolist(),
                                metric=meta["metric"], texts=[tuple(t) for t in meta["texts"]])


def save(truth: Truth, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"attn_{k}": v for k, v in truth.attn.items()}
    if truth.neuron is not None:
        arrays["neuron"] = truth.neuron
    meta = {"task": truth.task, "seconds": truth.seconds, **pair_meta(truth.pairs)}
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **pair_arrays(truth.pairs), **arrays)


def load(task: str, root: Path = ROOT, prefix: str = "") -> Truth:
    with np.load(path_for(task, root, prefix)) as data:
        meta = json.loads(str(data["meta"]))
        pairs = pairs_from(data, meta)
        attn = {k: data[f"attn_{k}"] for k in ATTN}
        neuron = data["neuron"] if "neuron" in data else None
    return Truth(meta["task"], pairs, attn, neuron, meta["seconds"])
