"""A MIB circuit-track submission folder from a run's edge scores.

MIB's circuit track takes one folder per task and model, named ``{task}_{model}`` with the task's
underscores written as hyphens (``ioi_gpt2``, ``arithmetic-addition_llama3``), each holding one file
of importance scores for every edge, ``importances.json`` (EAP-IG's ``Graph.to_json`` format; MIB's
own attribution script writes exactly this name). MIB then builds its circuits itself from the scores
(the top n edges, signed for CPR, by absolute value for CMD), so ``in_graph`` is not used there.
The score is MIB's importance, −effect (see :mod:`atpstar.edges.export`).

The model part of the name is MIB's short name for the models it ranks (``gpt2``, ``qwen2.5``,
``gemma2``, ``llama3``), else the last part of the model id, lower case, underscores as hyphens.
"""

from __future__ import annotations

import re
from pathlib import Path

from .export import eap_graph_of, write_json

__all__ = ["MIB_FILE", "MIB_MODELS", "mib_folder_name", "write_mib_folder"]

MIB_FILE = "importances.json"
MIB_MODELS = {"gpt2": "gpt2", "gpt2-small": "gpt2", "Qwen/Qwen2.5-0.5B": "qwen2.5", "google/gemma-2-2b": "gemma2",
              "meta-llama/Llama-3.1-8B": "llama3"}
"""Model ids → MIB's short names (the models MIB's circuit track ranks)."""


def mib_folder_name(task: str, model: str) -> str:
    """MIB's folder for one task and model: ``{task}_{model}``, e.g. ``ioi_gpt2``; ``task`` may be a
    built-in task name or a pairs file (its stem is used), ``model`` a model id or a local path."""
    task = Path(str(task)).stem if str(task).endswith((".jsonl", ".csv")) else str(task)
    short = MIB_MODELS.get(str(model)) or Path(str(model).rstrip("/")).name.lower()
    task, short = (re.sub(r"[_\s]+", "-", s.strip()) for s in (task, short))
    if not task or not short:
        raise ValueError(f"cannot name a MIB folder from task {task!r} and model {model!r}: give both")
    return f"{task}_{short}"


def write_mib_folder(scores, d_model: int, out, task: str, model: str, verified=None, score: str = "effect",
                     circuit=None) -> Path:
    """Write ``OUT/{task}_{model}/importances.json`` (:func:`~atpstar.edges.export.eap_graph_of` of
    ``scores``, exact effects where ``verified``) and return its path."""
    graph = eap_graph_of(scores, d_model, circuit=circuit, verified=verified, score=score)
    return write_json(graph, Path(out) / mib_folder_name(task, model) / MIB_FILE)
