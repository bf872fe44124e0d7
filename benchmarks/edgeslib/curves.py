"""Cost of verified recall over the edge universe (``atpstar.recall_cost``) for the AtP variants, random
orders and the oracle, and the tables beside it: the true top edges' ranks, each reader's edge sums."""

from __future__ import annotations

import numpy as np
import pandas as pd

import atpstar

from .setting import VARIANTS

RANDOM_PERMUTATIONS = 200


def ranks_of(score: np.ndarray) -> np.ndarray:
    """0-based rank of every entry by decreasing score (NaN last; ties by index)."""
    s = np.where(np.isfinite(score), score, -np.inf)
    order = np.lexsort((np.arange(len(s)), -s))
    rank = np.empty(len(s), dtype=np.int64)
    rank[order] = np.arange(len(s))
    return rank


def recall(table: pd.DataFrame, rank: np.ndarray, k: int, estimation: float = 0.0) -> pd.DataFrame:
    """``atpstar.recall_cost`` of the universe's edges (``table``: names and exact mean effects) in the order
    given by ``rank`` (0-based rank of each row), against their exact effects."""
    truth = table[["name", "exact"]].rename(columns={"exact": "effect_exact"})
    ranking = pd.DataFrame({"name": table["name"].to_numpy()[np.argsort(rank, kind="stable")]})
    return atpstar.recall_cost(ranking, truth, k=k, estimation_cost=estimation)


def curves(table: pd.DataFrame, est: dict, ratio: float, k: int) -> tuple[pd.DataFrame, dict]:
    """Cost of verified recall per k of every AtP variant (estimation counted by passes and, ``(time)``,
    by wall-clock time calibrated on AtP), random orders and the oracle; and each one's estimation cost."""
    ks = np.arange(1, k + 1)
    rows = {"k": ks, "oracle": ks.astype(float)}
    estimation = {}
    for method in VARIANTS:
        forward, backward, n_pairs, _ = est[f"{method}_cost"]
        estimation[method] = (forward + backward * ratio) / n_pairs
        rows[method] = recall(table, ranks_of(est[f"{method}_score"]), k, estimation[method])["cost"].to_numpy()
    gen = np.random.default_rng(0)
    rows["random"] = np.mean([recall(table, gen.permutation(len(table)), k)["verified"].to_numpy()
                              for _ in range(RANDOM_PERMUTATIONS)], 0)
    estimation["random"] = estimation["oracle"] = 0.0
    # the same with estimation costs from wall-clock time, calibrated on plain AtP (3 forwards + 1 backward)
    per_equivalent = est["AtP_cost"][3] / est["AtP_cost"][2] / estimation["AtP"]
    by_time = {m: est[f"{m}_cost"][3] / est[f"{m}_cost"][2] / per_equivalent for m in VARIANTS}
    for method in VARIANTS:
        rows[method + " (time)"] = rows[method] - estimation[method] + by_time[method]
    estimation.update({m + " (time)": v for m, v in by_time.items()})
    return pd.DataFrame(rows), estimation


def misses(table: pd.DataFrame, est: dict, top_true: int = 20, cut: int = 100) -> pd.DataFrame:
    """The true top-``top_true`` edges and each method's rank of them (within the universe)."""
    value = table.exact.abs().to_numpy()
    top = np.lexsort((np.arange(len(value)), -value))[:top_true]
    out = table.iloc[top][["name", "exact"]].copy()
    out.insert(0, "true_rank", np.arange(1, top_true + 1))
    for method in VARIANTS:
        out[method] = ranks_of(est[f"{method}_score"])[top] + 1
    for method in VARIANTS:
        out[method + " (all edges)"] = est[f"{method}_global_rank"][top]
    out["AtP_miss"] = out["AtP"] > cut
    out["AtP_miss_all_edges"] = out["AtP (all edges)"] > cut
    return out


def reader_sums(readers: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per reader: its node's exact effect, the sum of its edges' exact effects, its largest edge."""
    rows = []
    for name, pos, node in zip(readers.reader, readers.pos, readers.node_effect):
        part = table[(table.reader == name) & (table.pos == pos)]
        best = part.loc[part.exact.abs().idxmax()]
        rows.append({"reader": f"{name}@{pos}", "node_effect": node, "edges": len(part),
                     "sum_of_edges": float(part.exact.sum()), "largest_edge": best["name"],
                     "largest_effect": float(best.exact)})
    return pd.DataFrame(rows)
