"""The HTML report of a run folder: ``write_report(DIR)`` writes ``DIR/report.html`` from the folder's
files alone (``atpstar report DIR`` does the same). The page is self-contained: figures are inline
PNG images drawn with matplotlib, styles and the table-sorting script are inline, and it makes no
network request, so it opens offline and can be mailed as one file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..folder import EDGES_PARQUET, FAITHFULNESS_JSON, NODES_PARQUET, REPORT, RunDir, atomic_write
from .page import SECTIONS, build

__all__ = ["SECTIONS", "build", "write_report"]


def write_report(run_dir) -> Path:
    """Build ``report.html`` in the run folder ``run_dir`` and return its path."""
    folder = RunDir(run_dir)
    meta = folder.read_meta()
    has_nodes, has_edges = (folder / NODES_PARQUET).is_file(), (folder / EDGES_PARQUET).is_file()
    if not has_nodes and not has_edges:
        raise ValueError(f"{folder.path} has no node or edge table yet (the run did not get that far): "
                         f"finish it with `atpstar resume {folder.path}` first")
    nodes = pd.read_parquet(folder / NODES_PARQUET) if has_nodes else None
    edges = pd.read_parquet(folder / EDGES_PARQUET) if has_edges else None
    diagnosis = suspects = None
    if folder.done("diagnosis.json"):
        diagnosis = json.loads(folder.stage("diagnosis.json").read_text(encoding="utf-8"))
    if folder.done("suspects.parquet"):
        suspects = pd.read_parquet(folder.stage("suspects.parquet"))
    edge_diagnosis = edge_suspects = None
    if folder.done("edge-diagnosis.json"):
        edge_diagnosis = json.loads(folder.stage("edge-diagnosis.json").read_text(encoding="utf-8"))
    if folder.done("edge-suspects.parquet"):
        edge_suspects = pd.read_parquet(folder.stage("edge-suspects.parquet"))
    faith = None
    if folder.done(FAITHFULNESS_JSON):
        faith = json.loads(folder.stage(FAITHFULNESS_JSON).read_text(encoding="utf-8"))
    page = build(meta, nodes, diagnosis, suspects, edges, edge_diagnosis, edge_suspects, faith)
    path = folder / REPORT
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path
