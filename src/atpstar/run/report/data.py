"""What the report shows, computed from the run folder's node table (no model needed).

Everything is aggregated so that the page stays small for runs of ~10^6 nodes: heatmaps are
maxima over positions (or units), the table and scatter show the top / verified nodes only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..folder import method_slug
from ...types import ALL_KINDS

TOP_ROWS = 200
"""Rows of the sortable table of top nodes."""
RECALL_K = 50
"""The recall-vs-cost curve follows the verified recall of the true top-K nodes."""


def kinds_in(nodes: pd.DataFrame) -> list[str]:
    present = set(nodes["kind"].unique())
    return [k.value for k in ALL_KINDS if k.value in present]


def heatmap(nodes: pd.DataFrame, kind: str, column: str, by: str = "unit") -> np.ndarray:
    """(layers, units) — or (layers, positions) with ``by="pos"`` — max of ``column`` over the rest."""
    rows = nodes[nodes["kind"] == kind]
    layers = int(nodes["layer"].max()) + 1
    width = int(rows[by].max()) + 1 if len(rows) else 1
    out = np.full((layers, width), np.nan)
    if len(rows):
        top = rows.groupby(["layer", by], sort=False)[column].max()
        out[top.index.get_level_values(0), top.index.get_level_values(1)] = top.to_numpy()
    return out


def by_position(nodes: pd.DataFrame, column: str, n_pos: int) -> pd.DataFrame:
    """(kinds, positions) max of ``column`` per node kind and position."""
    table = nodes.groupby(["kind", "pos"], sort=False)[column].max().unstack("pos")
    table = table.reindex(index=kinds_in(nodes), columns=range(n_pos))
    return table


def top_table(nodes: pd.DataFrame, methods: list[str], rows: int = TOP_ROWS) -> pd.DataFrame:
    """The first ``rows`` nodes of the primary ranking, with every method's score and the verified effect."""
    primary = method_slug(methods[0])
    columns = ["rank", "name", "kind", "layer", "unit", "pos", "token", f"score_{primary}", f"effect_{primary}",
               "effect_exact"] + [f"score_{method_slug(m)}" for m in methods[1:]]
    return nodes.head(rows)[[c for c in columns if c in nodes.columns]]


def scatter(nodes: pd.DataFrame, primary: str) -> pd.DataFrame:
    """Verified nodes: the primary method's signed estimate against the exact effect."""
    return nodes.loc[nodes["verified"], ["kind", "name", f"effect_{method_slug(primary)}", "effect_exact"]]


def recall_curves(nodes: pd.DataFrame, methods: list[str], estimate_cost: dict, k: int = RECALL_K) -> dict | None:
    """When ``acp`` (exact patching of every node) is among the methods: for each other method and the
    oracle, the cost per pair of following its ranking until the true top-j nodes are all verified, for
    j = 1..``k`` (:func:`atpstar.recall_cost`: its estimation cost + one forward pass per verified node).
    Returns ``{method: (cost, j)}`` step points (a method's first point: its estimation cost, j = 0),
    or None without ground truth."""
    from ...verification.recall import recall_cost

    if "acp" not in methods or len(nodes) == 0:
        return None
    canonical = nodes.sort_values(["kind", "layer", "unit", "pos"], key=_kind_order, kind="stable")
    truth = canonical[["kind", "layer", "unit", "pos", "score_acp"]].rename(columns={"score_acp": "score"})
    k = min(k, int(truth["score"].notna().sum()))
    if k == 0:
        return None
    out = {}
    for method in [m for m in methods if m != "acp"] + ["oracle"]:
        column = "score_acp" if method == "oracle" else f"score_{method_slug(method)}"
        ranked = canonical.iloc[np.argsort(-canonical[column].to_numpy(dtype=float), kind="stable")]
        ranking = ranked[["kind", "layer", "unit", "pos", column]].rename(columns={column: "score"})
        curve = recall_cost(ranking, truth, k, estimation_cost=estimate_cost.get(method, 0.0))
        start = [estimate_cost.get(method, 0.0)] if method != "oracle" else []
        out[method] = (np.concatenate([start, curve["cost"].to_numpy(dtype=float)]),
                       np.concatenate([[0] if start else [], curve["k"].to_numpy()]))
    return out


def _kind_order(column: pd.Series) -> pd.Series:
    """Sort key putting node kinds in their canonical order (q, k, v, head, neuron)."""
    if column.name != "kind":
        return column
    return column.map({kind.value: i for i, kind in enumerate(ALL_KINDS)})
