"""The run folder: everything one ``atpstar run`` produced, readable back with :func:`load_run`.

Layout of ``DIR``::

    run.json          model id and weight hash, every option, seed, package versions, costs,
                      the diagnostic's statement, and which stages are finished
    nodes.parquet     the node table (also nodes.csv): one row per node, ranked by the first method
    nodes.csv         (runs at ``--level nodes`` or ``both``)
    edges.parquet     the edge table (also edges.csv): the top edges of the first method's edge ranking
    edges.csv         (runs at ``--level edges`` or ``both``)
    report.html       the self-contained report (``atpstar report DIR`` rebuilds it)
    stages/           each finished stage's results (prompt pairs, each method's Scores, the
                      verification, the diagnostic); a resumed run skips every stage found here
    checkpoints/      partial results of unfinished stages (exact patching, verification)

Every file is written atomically (to a temporary name, then renamed), so an interruption at any
moment leaves each file either complete or absent.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..cost import Cost
from ..pairs import PromptPairs
from ..scores import Scores
from ..types import ALL_KINDS, NodeKind

RUN_JSON, NODES_PARQUET, NODES_CSV, REPORT = "run.json", "nodes.parquet", "nodes.csv", "report.html"
EDGES_PARQUET, EDGES_CSV = "edges.parquet", "edges.csv"
FAITHFULNESS_JSON, FAITHFULNESS_CSV = "faithfulness.json", "faithfulness.csv"
"""``--faithfulness``: the scorecard (``stages/faithfulness.json``) and its curves as a table (``faithfulness.csv``)."""
EDGE_ROWS = 100_000
"""Rows of the edge table: the top of the ranking (a prompt has ~10^6 edges; the full (W, R, T) scores
stay in ``stages/edge-scores-<method>.pt``)."""
FORMAT = 1
"""Version of the run-folder layout, recorded in run.json."""


class RunDir:
    """Paths inside a run folder, and atomic reads/writes of its files."""

    def __init__(self, path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def stage(self, name: str) -> Path:
        return self.path / "stages" / name

    def checkpoint(self, name: str) -> Path:
        return self.path / "checkpoints" / name

    def is_run(self) -> bool:
        return (self.path / RUN_JSON).is_file()

    def read_meta(self) -> dict:
        path = self.path / RUN_JSON
        if not self.path.is_dir():
            raise FileNotFoundError(f"no such run folder: {self.path}")
        if not path.is_file():
            raise ValueError(f"{self.path} is not an atpstar run folder (no {RUN_JSON} in it)")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is damaged ({err}); the stage results in {self.path / 'stages'} are intact, "
                             "but without run.json the run cannot be resumed: start it again") from None

    def write_meta(self, meta: dict) -> None:
        atomic_write(self.path / RUN_JSON, lambda tmp: tmp.write_text(json.dumps(meta, indent=2, default=_jsonable)))

    def done(self, name: str) -> bool:
        return self.stage(name).exists()


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _jsonable(value):
    if isinstance(value, Cost):
        return value.to_dict()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# --- Scores and prompt pairs -------------------------------------------------------------------
def save_scores(scores: Scores, path: Path) -> None:
    """A Scores as tensors (loadable with ``weights_only=True``) plus its info as JSON text."""
    state = {"method": scores.method, "n_pairs": scores.n_pairs,
             "info": json.dumps(scores.info, default=_jsonable)}
    for name in ("effect", "score", "mean_abs"):
        state[name] = {k.value: v for k, v in getattr(scores, name).items()}
    if scores.per_pair is not None:
        state["per_pair"] = {k.value: v for k, v in scores.per_pair.items()}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_scores(path: Path) -> Scores:
    state = _load(path)
    kinds = lambda d: {NodeKind(k): v for k, v in d.items()}  # noqa: E731
    info = json.loads(state["info"])
    if isinstance(info.get("cost"), dict):
        info["cost"] = Cost.of(info)
    per_pair = kinds(state["per_pair"]) if "per_pair" in state else None
    return Scores(state["method"], kinds(state["effect"]), kinds(state["score"]), state["n_pairs"],
                  kinds(state["mean_abs"]), per_pair, info)


def save_pairs(pairs: PromptPairs, path: Path) -> None:
    metric = pairs.metric if isinstance(pairs.metric, str) or pairs.metric is None else getattr(pairs.metric, "name", None)
    state = {"clean": list(pairs.clean), "noise": list(pairs.noise), "answer": pairs.answer,
             "distractor": pairs.distractor, "metric": metric or "", "texts": json.dumps(list(pairs.texts))}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_pairs(path: Path) -> PromptPairs:
    state = _load(path)
    texts = tuple(tuple(t) for t in json.loads(state["texts"]))
    return PromptPairs(tuple(state["clean"]), tuple(state["noise"]), state["answer"], state["distractor"],
                       state["metric"] or None, texts)


def _load(path: Path):
    try:
        return torch.load(path, weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise ValueError(f"{path} is damaged ({type(err).__name__}); delete it and run `atpstar resume` "
                         "to recompute that stage") from None


def save_frame(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))


# --- edges -------------------------------------------------------------------------------------------
_GRAPH_FIELDS = ("writer_names", "writer_layer", "writer_kind", "writer_unit", "reader_names", "reader_layer",
                 "reader_kind", "reader_unit", "valid", "n_layers", "n_heads", "n_kv_heads", "per_head",
                 "parallel_residual")


def save_edge_scores(scores, path: Path) -> None:
    """An EdgeScores (its graph included, so the folder reads back without the model) as plain tensors."""
    state = {"method": scores.method, "n_pairs": scores.n_pairs, "effect": scores.effect, "score": scores.score,
             "info": json.dumps(scores.info, default=_jsonable),
             "graph": {k: getattr(scores.graph, k) for k in _GRAPH_FIELDS}}
    if scores.per_pair is not None:
        state["per_pair"] = scores.per_pair
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_edge_scores(path: Path):
    from ..edges import EdgeGraph, EdgeScores

    state = _load(path)
    graph = dict(state["graph"])
    graph["writer_names"], graph["reader_names"] = tuple(graph["writer_names"]), tuple(graph["reader_names"])
    info = json.loads(state["info"])
    if isinstance(info.get("cost"), dict):
        info["cost"] = Cost.of(info)
    return EdgeScores(state["method"], EdgeGraph(**graph), state["effect"], state["score"], state["n_pairs"],
                      state.get("per_pair"), info)


def edge_table(scores, verified: pd.DataFrame | None, tokens: list[str], rows: int = EDGE_ROWS) -> pd.DataFrame:
    """The top ``rows`` edges of the ranking, best first: ``rank``, the tidy columns of
    :meth:`EdgeScores.to_frame` (name, writer, reader, pos, writer_/reader_ layer, kind, unit, score,
    effect), ``token`` (the display prompt's token at ``pos``), ``verified`` and ``effect_exact``."""
    frame = scores.to_frame(top=rows)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame.insert(5, "token", [tokens[p] if 0 <= p < len(tokens) else "" for p in frame["pos"]])
    frame["verified"] = False
    frame["effect_exact"] = np.nan
    if verified is not None and len(verified):
        exact = verified.set_index("name")["effect_exact"]
        hit = frame["name"].isin(exact.index)
        frame.loc[hit, "verified"] = True
        frame.loc[hit, "effect_exact"] = frame.loc[hit, "name"].map(exact).to_numpy(dtype=float)
    return frame


# --- the node table ------------------------------------------------------------------------------
def method_slug(method: str) -> str:
    """A column / file-name form of a method name: ``atp*`` -> ``atpstar``."""
    return method.replace("*", "star")


def node_table(scores: dict, primary: str, verified: pd.DataFrame | None, tokens: list[str]) -> pd.DataFrame:
    """One row per node of the primary method's ranking, best first.

    Columns: ``rank`` (1 = top of the primary ranking), kind, layer, unit, pos, name, ``token`` (the
    token at ``pos`` of the display prompt), ``effect_<m>``/``score_<m>`` for every method ``m``
    (``atp*`` is written ``atpstar``), ``verified`` and ``effect_exact`` (the verified exact mean
    effect; NaN where not verified)."""
    base = scores[primary]
    parts = []
    for kind in base.kinds:
        shape = base.score[kind].shape
        layer, unit, pos = (t.flatten().numpy() for t in torch.meshgrid(*(torch.arange(n) for n in shape), indexing="ij"))
        part = {"kind": kind.value, "layer": layer, "unit": unit, "pos": pos}
        for method, sc in scores.items():
            slug = method_slug(method)
            for column, values in (("effect", sc.effect), ("score", sc.score)):
                tensor = values.get(kind)
                part[f"{column}_{slug}"] = (np.full(len(layer), np.nan) if tensor is None
                                            else tensor.flatten().double().numpy())
        parts.append(pd.DataFrame(part))
    frame = pd.concat(parts, ignore_index=True)
    key = f"score_{method_slug(primary)}"
    frame = frame[frame[key].notna()]
    frame = frame.iloc[np.argsort(-frame[key].to_numpy(), kind="stable")].reset_index(drop=True)
    letter = frame["kind"].map({k.value: k.unit_letter for k in ALL_KINDS})
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame.insert(5, "name", "L" + frame["layer"].astype(str) + "." + frame["kind"] + "." + letter
                 + frame["unit"].astype(str) + "@" + frame["pos"].astype(str))
    frame.insert(6, "token", np.asarray(tokens, dtype=object)[frame["pos"].to_numpy()] if len(tokens) else "")
    frame["verified"] = False
    frame["effect_exact"] = np.nan
    if verified is not None and len(verified):
        exact = verified.set_index(["kind", "layer", "unit", "pos"])["effect"]
        index = pd.MultiIndex.from_frame(frame[["kind", "layer", "unit", "pos"]])
        hit = index.isin(exact.index)
        frame.loc[hit, "verified"] = True
        frame.loc[hit, "effect_exact"] = exact.reindex(index[hit]).to_numpy()
    return frame


def display_tokens(model, pairs: PromptPairs) -> tuple[list[str], int]:
    """The tokens of the first longest clean prompt (positions are right-aligned, so this prompt covers
    every position), and its pair index: the report's and node table's ``token`` column."""
    index = pairs.lengths.index(pairs.max_len)
    decode = getattr(model.tokenizer, "decode", None)
    ids = pairs.clean[index].tolist()
    return [decode([i]) if decode else str(i) for i in ids], index


# --- loading a run back ---------------------------------------------------------------------------
@dataclass
class RunFolder:
    """A run folder read back: ``nodes`` (the node table), ``scores`` ({method: Scores}), ``verified``
    (the verified nodes in rank order, with exact per-node effects), ``diagnosis`` (dict) and
    ``suspects`` (the diagnostic's table) where the run made them, ``pairs`` and ``meta`` (run.json);
    at ``--level edges``/``both``: ``edges`` (the edge table), ``edge_scores`` (the EdgeScores) and
    ``verified_edges``; with ``--diagnose``, ``edge_diagnosis`` (dict) and ``edge_suspects``; with
    ``--faithfulness``, ``faithfulness`` (dict)."""

    path: Path
    meta: dict
    nodes: pd.DataFrame | None = None
    scores: dict = field(default_factory=dict)
    verified: pd.DataFrame | None = None
    diagnosis: dict | None = None
    suspects: pd.DataFrame | None = None
    pairs: PromptPairs | None = None
    edges: pd.DataFrame | None = None
    edge_scores: object = None
    verified_edges: pd.DataFrame | None = None
    edge_diagnosis: dict | None = None
    edge_suspects: pd.DataFrame | None = None
    faithfulness: dict | None = None
    """``--faithfulness``: the edge ranking's curves, CPR, CMD and smallest circuits (``stages/faithfulness.json``)."""

    @property
    def finished(self) -> bool:
        return self.meta.get("status") == "done"

    def __repr__(self) -> str:
        n = "?" if self.nodes is None else f"{len(self.nodes):,}"
        e = "" if self.edges is None else f", edges={len(self.edges):,}"
        return (f"RunFolder({str(self.path)!r}, status={self.meta.get('status')}, nodes={n}{e}, "
                f"methods={list(self.scores)})")


def load_run(path) -> RunFolder:
    """Read a run folder written by ``atpstar run`` / :func:`atpstar.run.pipeline.run` (finished or not:
    whatever stages are done are loaded)."""
    folder = RunDir(path)
    meta = folder.read_meta()
    out = RunFolder(folder.path, meta)
    if (folder / NODES_PARQUET).is_file():
        out.nodes = pd.read_parquet(folder / NODES_PARQUET)
    for method in meta.get("config", {}).get("methods", []):
        file = folder.stage(f"scores-{method_slug(method)}.pt")
        if file.is_file():
            out.scores[method] = load_scores(file)
    if (folder / EDGES_PARQUET).is_file():
        out.edges = pd.read_parquet(folder / EDGES_PARQUET)
    methods = meta.get("config", {}).get("methods", [])
    stages = {"verified": "verified.parquet", "diagnosis": "diagnosis.json", "suspects": "suspects.parquet",
              "pairs": "pairs.pt", "verified_edges": "verified-edges.parquet", "edge_diagnosis": "edge-diagnosis.json",
              "edge_suspects": "edge-suspects.parquet", "faithfulness": FAITHFULNESS_JSON}
    if methods:
        stages["edge_scores"] = f"edge-scores-{method_slug(methods[0])}.pt"
    read = {".parquet": pd.read_parquet, ".json": lambda f: json.loads(f.read_text(encoding="utf-8"))}
    for attribute, name in stages.items():
        if folder.done(name):
            reader = load_pairs if name == "pairs.pt" else load_edge_scores if name.endswith(".pt") else \
                read[Path(name).suffix]
            setattr(out, attribute, reader(folder.stage(name)))
    return out
