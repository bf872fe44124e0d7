"""The setting of the edge evidence: model and pairs (SmolLM2 on the study's IOI pairs, or a tiny random
Llama for ``--quick``), the readers (true top q/k/v nodes plus the logits) and the edge universe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar
from atpstar import edges as E
from benchmarks.tiny import random_pairs, tiny_llama

VARIANTS = {"AtP": (False, False), "AtP+QKfix": (True, False), "AtP+GradDrop": (False, True), "AtP*": (True, True)}
OUT = Path("benchmarks/results/edges")
FIGS = Path("docs/edges")
QUICK_OUT = Path("/tmp/edges_evidence_quick")


def folders(quick: bool, out: Path | None) -> tuple[Path, Path]:
    """(results folder, figures folder): ``--out`` or the default; ``--quick`` keeps its figures in its results."""
    out = out or (QUICK_OUT if quick else OUT)
    return out, (out / "figures" if quick else FIGS)


def setting(args):
    """(model, pairs, node truth: {kind: (P, L, U, T) per-pair exact effects})."""
    torch.manual_seed(0)
    if args.quick:
        return quick_setting()
    from benchmarks.studylib import truth as study_truth

    truth = study_truth.load("ioi")
    model = atpstar.load_model("default")
    pairs = truth.pairs if args.pairs is None else truth.pairs.select(args.pairs)
    idx = list(range(len(truth.pairs))) if args.pairs is None else args.pairs
    return model, pairs, {k: truth.attn[k][idx] for k in ("q", "k", "v")}


def quick_setting():
    """A 3-layer random Llama, 2 random pairs of 8 tokens, node truth by ``acp`` on the spot."""
    model, pairs = tiny_llama(), random_pairs([8, 8])
    exact = atpstar.acp(model, pairs, kinds=["q", "k", "v"], per_pair=True, progress=False)
    node_truth = {k: exact.per_pair[atpstar.NodeKind(k)].numpy() for k in ("q", "k", "v")}
    return model, pairs, node_truth


def setting_lengths(args) -> list[int]:
    """Token lengths of the pairs (without loading a model)."""
    if args.quick:
        return [8, 8]
    from benchmarks.studylib import truth as study_truth

    lengths = study_truth.load("ioi").pairs.lengths
    return lengths if args.pairs is None else [lengths[i] for i in args.pairs]


def choose_readers(graph, node_truth: dict, n: int, n_pos: int) -> pd.DataFrame:
    """The top-n q/k/v nodes by |mean exact effect| as readers (name, pos), plus logits at the final position."""
    rows = []
    for kind, values in node_truth.items():
        mean = np.nanmean(values, 0)
        for (layer, unit, pos), v in np.ndenumerate(mean):
            if np.isfinite(v):
                rows.append((kind, layer, unit, pos, float(v)))
    nodes = pd.DataFrame(rows, columns=["kind", "layer", "unit", "pos", "node_effect"])
    nodes = nodes.reindex(nodes.node_effect.abs().sort_values(ascending=False).index).head(n)
    head = np.where(nodes.kind == "q", "H", "G")
    nodes["reader"] = ["L%d.%s.%s%d" % (l, k, h, u) for l, k, h, u in zip(nodes.layer, nodes.kind, head, nodes.unit)]
    logits = pd.DataFrame([{"kind": "logits", "layer": graph.n_layers, "unit": -1, "pos": n_pos - 1,
                            "node_effect": np.nan, "reader": "logits"}])
    return pd.concat([nodes, logits], ignore_index=True)[["reader", "pos", "kind", "layer", "unit", "node_effect"]]


def universe(graph, readers: pd.DataFrame) -> E.EdgeSet:
    """Every edge into the chosen readers at their positions."""
    parts = []
    for name, pos in zip(readers.reader, readers.pos):
        r = int(graph.reader_index([name])[0])
        w = graph.valid[:, r].nonzero().flatten()
        parts.append(E.EdgeSet(w, torch.full_like(w, r), torch.full_like(w, int(pos))))
    out = parts[0]
    for p in parts[1:]:
        out = out.cat(p)
    return out


def position_labels(model, pairs) -> dict:
    """Aligned position -> the pairs' clean tokens there (distinct ones, joined by '/')."""
    labels = {}
    for clean in pairs.clean:
        offset = pairs.max_len - len(clean)
        for j, tok in enumerate(clean.tolist()):
            text = repr(model.tokenizer.decode([int(tok)])).strip("'")
            got = labels.setdefault(offset + j, [])
            if text not in got:
                got.append(text)
    return {p: "/".join(v) for p, v in labels.items()}
