"""The edge evidence's cached stages: exact effects of every universe edge (one reader at a time) and
every AtP variant's estimates; each saved as it goes (``.npz``), so a rerun resumes where one stopped."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from atpstar import edges as E

from .setting import VARIANTS, universe

TOP_GLOBAL = 200


def load_cache(path: Path) -> dict:
    """The arrays of a stage's ``.npz`` cache ({} before its first save)."""
    if not path.exists():
        return {}
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def stage_truth(model, pairs, graph, readers, out: Path) -> dict:
    """Per-pair exact effects of every universe edge, one reader at a time, saved after each."""
    path = out / "edge_truth.npz"
    done = load_cache(path)
    patcher = None
    for i, (name, pos) in enumerate(zip(readers.reader, readers.pos)):
        key = f"r{i}_{name}@{pos}"
        if key in done:
            continue
        patcher = patcher or E.EdgePatcher(model, pairs, graph=graph)
        edges = universe(graph, readers.iloc[[i]])
        t0 = time.perf_counter()
        values = patcher.single(edges).numpy().T.astype(np.float32)  # (P, N)
        seconds = time.perf_counter() - t0
        done[key] = values
        done[key + "_seconds"] = np.array([seconds, values.shape[1] * values.shape[0]])
        print(f"[truth] {key}: {values.shape[1]} edges x {values.shape[0]} pairs in {seconds:.1f}s "
              f"({1e3 * seconds / values.size:.1f} ms/patch)", flush=True)
        np.savez_compressed(path, **done)
    return done


def truth_table(graph, readers, done: dict, n_pos: int) -> pd.DataFrame:
    """One row per universe edge: ids, name, per-pair effects (columns p0..), mean effect."""
    edges = universe(graph, readers)
    per_pair = np.concatenate([done[f"r{i}_{n}@{p}"] for i, (n, p) in enumerate(zip(readers.reader, readers.pos))], 1)
    frame = E.edge_frame(graph, edges, torch.zeros(len(edges)), torch.zeros(len(edges))).drop(columns=["score", "effect"])
    frame.insert(0, "id", edges.ids(graph, n_pos).numpy())
    for p in range(per_pair.shape[0]):
        frame[f"p{p}"] = per_pair[p]
    frame["exact"] = np.nanmean(per_pair, 0)
    return frame


def stage_estimates(model, pairs, graph, ids: np.ndarray, out: Path) -> dict:
    """Every variant's score/effect on the universe edges, its global top edges and its cost."""
    path = out / "edge_estimates.npz"
    done = load_cache(path)
    for method, (qk, gd) in VARIANTS.items():
        if f"{method}_global_rank" in done:
            continue
        t0 = time.perf_counter()
        est = E.atp(model, pairs, qk_fix=qk, graddrop=gd, graph=graph)
        seconds = time.perf_counter() - t0
        cost = est.info["cost"]
        score, effect = est.score.flatten().numpy(), est.effect.flatten().numpy()
        top = est.ranked_ids(TOP_GLOBAL).numpy()
        done[f"{method}_score"], done[f"{method}_effect"] = score[ids].astype(np.float32), effect[ids].astype(np.float32)
        done[f"{method}_top_ids"], done[f"{method}_top_score"] = top, score[top].astype(np.float32)
        done[f"{method}_top_effect"] = effect[top].astype(np.float32)
        ranked = np.sort(np.where(np.isfinite(score), score, -np.inf))  # every edge of the model, ascending
        done[f"{method}_global_rank"] = len(ranked) - np.searchsorted(ranked, score[ids], side="right") + 1
        done["n_model_edges"] = np.array(int(np.isfinite(score).sum()))
        done[f"{method}_cost"] = np.array([cost.forward, cost.backward, cost.pairs, seconds])
        print(f"[estimates] {method}: {seconds:.1f}s, forward {cost.forward:.1f}, backward {cost.backward:.1f}", flush=True)
        np.savez_compressed(path, **done)
    return done
