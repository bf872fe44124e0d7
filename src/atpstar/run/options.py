"""Parsing and checking the options of a run (shared by the command line and :mod:`atpstar.run.pipeline`).

Every check runs before any model is loaded, and a bad value raises a ValueError that says what
is accepted.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .registry import EDGE_METHODS, RUN_METHODS

METHOD_NAMES = tuple(RUN_METHODS)
LEVELS = ("nodes", "edges", "both")
"""What a run ranks: nodes (components), edges (a writer's output read by a later reader at one position), or both."""
DEVICES = ("cpu", "cuda", "auto")
DTYPES = ("float32", "bfloat16")
PAIR_FILE_SUFFIXES = (".jsonl", ".json", ".csv")


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_model_spec(spec) -> None:
    """Catch what can be caught before loading: empty names, missing .gguf files and directories."""
    from ..substrate.model import check_local_path

    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--model must be 'default', a hub id, a model directory or a .gguf file")
    if spec.endswith(".gguf"):
        if not Path(spec).expanduser().is_file():
            raise FileNotFoundError(f"GGUF file not found: {spec}")
        return
    if spec != "default":
        check_local_path(spec)


def check_task(task) -> None:
    from ..tasks import TASKS

    if not isinstance(task, str) or not task:
        raise ValueError(f"--task must be one of {sorted(TASKS)} or a path to a .jsonl / .csv pairs file")
    if task in TASKS:
        return
    path = Path(task)
    if path.suffix.lower() not in PAIR_FILE_SUFFIXES:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(sorted(TASKS))} (see `atpstar tasks`), "
                         "or a path to your own pairs file ending in .jsonl or .csv")
    if path.is_dir():
        raise IsADirectoryError(f"{task} is a directory, not a pairs file (.jsonl or .csv)")
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {task}")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"cannot read the pairs file {task}: permission denied")


def parse_methods(methods) -> list[str]:
    """``"atp*,acp"`` or a list -> a list of known, available method names (duplicates dropped)."""
    items = methods.split(",") if isinstance(methods, str) else list(methods or [])
    names = list(dict.fromkeys(m.strip().lower() for m in items if str(m).strip()))
    if not names:
        raise ValueError(f"no method given; use one or more of {', '.join(METHOD_NAMES)}")
    for name in names:
        if name not in RUN_METHODS:
            raise ValueError(f"unknown method {name!r}; use one of {', '.join(METHOD_NAMES)} "
                             "(several, comma-separated: the first one's ranking is verified)")
    return names


def parse_kinds(kinds) -> list:
    from ..types import NodeKind

    return NodeKind.parse(kinds)


_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(nodes?|n|edges?|s|sec|seconds?)?\s*$", re.IGNORECASE)


def parse_budget(text):
    """``None``/``"0"``/``"none"`` -> None (no verification); ``"100"`` -> ("forward", 100.0) forward-pass
    equivalents per pair; ``"50nodes"`` -> ("nodes", 50); ``"60s"`` -> ("seconds", 60.0)."""
    if text is None or str(text).strip().lower() in ("none", "0", "0.0", "off"):
        return None
    m = _BUDGET.match(str(text))
    if not m:
        raise ValueError(f"cannot read the verification budget {text!r}: give forward-pass equivalents per pair "
                         "(e.g. 100), a number of nodes or edges (e.g. 50nodes, 50edges), seconds (e.g. 60s), "
                         "or 0 for none")
    value, unit = float(m.group(1)), (m.group(2) or "").lower()
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"the verification budget must be > 0 (or 0 for no verification), got {text!r}")
    if unit.startswith(("n", "e")):
        if value != int(value):
            raise ValueError(f"a budget in nodes or edges must be a whole number, got {text!r}")
        return ("nodes", int(value))
    if unit.startswith("s"):
        return ("seconds", value)
    return ("forward", value)


def budget_object(parsed):
    """The parsed budget as what :func:`atpstar.verification.verify` takes."""
    from ..verification.loop import Budget

    if parsed is None:
        return None
    kind, value = parsed
    return Budget(**{kind: value})


STOP_DEFAULTS = {"window": 20, "relative": 0.01}


def parse_stop(text):
    """``None``/``"none"`` -> None; ``"small-effects"`` -> SmallEffects(window=20, relative=0.01);
    ``"small-effects:window=30,threshold=0.05"`` -> those settings; ``"theta:target=T"`` or
    ``"theta:relative=R"`` (or both; plain ``"theta"``: relative=0.1) -> ThetaBelow: verify until the
    diagnostic's θ (re-bounded from one set of random subsets as nodes are verified) falls below T, or
    below R x the largest verified |effect|. Its subsets and p are the run's diagnostic design
    (:mod:`atpstar.run.design`, from --samples and --p or the planner), delta is --delta."""
    if text is None or str(text).strip().lower() in ("", "none", "off"):
        return None
    from ..stopping import SmallEffects

    name, _, args = str(text).strip().partition(":")
    name = name.strip().lower()
    if name not in ("small-effects", "small", "theta"):
        raise ValueError(f"unknown stop rule {name!r}; use small-effects[:window=W,threshold=T,relative=R] "
                         "(stop once the last W verified nodes all had a small effect), theta[:target=T,relative=R] "
                         "(stop once the diagnostic's bound θ is below T or R x the largest verified effect) or none")
    allowed = ("target", "relative", "every") if name == "theta" else ("window", "threshold", "relative")
    values = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in allowed:
            raise ValueError(f"stop rule setting {item!r}: use " + ", ".join(f"{a}=..." for a in allowed))
        try:
            values[key.strip()] = int(value) if key.strip() in ("window", "every") else float(value)
        except ValueError:
            raise ValueError(f"stop rule setting {item!r}: {value!r} is not a number") from None
    if name == "theta":
        if not values.keys() & {"target", "relative"}:
            values["relative"] = THETA_DEFAULTS["relative"]
        from ..diagnostics.theta import ThetaBelow

        return ThetaBelow(**values)  # its subsets and p: set by the run once it knows how many units are ranked
    if not values.keys() & {"threshold", "relative"}:
        values.setdefault("relative", STOP_DEFAULTS["relative"])
    values.setdefault("window", STOP_DEFAULTS["window"])
    return SmallEffects(**values)


THETA_DEFAULTS = {"relative": 0.1}
"""``--stop theta`` without settings: θ below 10% of the largest verified effect. Its subsets and p come from
the diagnostic's design, shared with ``--diagnose`` (:func:`atpstar.diagnostics.design`)."""


def check_level(level, methods: list[str], diagnose: bool) -> str:
    """``--level``: nodes, edges or both; edges are ranked by the methods of :data:`EDGE_METHODS` (the first
    one's ranking is verified). ``--diagnose`` bounds the unverified units of each level (nodes, edges, or both)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r}; use one of {', '.join(LEVELS)} (nodes: components, edges: "
                         "the connections between them)")
    if level != "nodes" and methods[0] not in EDGE_METHODS:
        raise ValueError(f"--level {level}: edges are ranked by the first method, which must be one of "
                         f"{', '.join(EDGE_METHODS)} (got {methods[0]!r}); put it first, e.g. --method atp*,{methods[0]}")
    nodes_only = [m for m in methods if m not in EDGE_METHODS]
    if level == "edges" and nodes_only:
        raise ValueError(f"--level edges: {', '.join(nodes_only)} ranks nodes only (edges take {', '.join(EDGE_METHODS)}); "
                         "drop it, or use --level both to run it on the nodes")
    return level


def check_faithfulness(faithfulness, level: str) -> bool:
    """``--faithfulness`` scores the first method's edge ranking as circuits, so it needs edges."""
    if not isinstance(faithfulness, bool):
        raise ValueError(f"faithfulness must be True or False (score the edge ranking's circuits, or not), "
                         f"got {faithfulness!r}")
    if faithfulness and level == "nodes":
        raise ValueError("--faithfulness scores the circuits of the edge ranking, and this run ranks nodes only: "
                         "add --level edges (or --level both)")
    return faithfulness


def check_diagnostic(samples, p, delta) -> None:
    """The diagnostic's options, before the model loads (the planner, :func:`atpstar.diagnostics.design`,
    chooses what is unset once the number of unverified units is known, and refuses a design that cannot
    bound them)."""
    if samples is not None:
        check_int("samples", samples, 2)
    if p is not None and not (isinstance(p, (int, float)) and 0 < p < 1):
        raise ValueError(f"p (the chance that a node is in a random subset) must be in (0, 1), got {p!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta (the bound fails with probability at most delta) must be in (0, 1), got {delta!r}")


EDGE_UNIVERSE_HELP = ("all (every edge, the default), top:M (the M top-ranked edges of the first method's ranking) or "
                      "readers:N (every edge, from every writer at every position, into the N readers with the "
                      "largest summed edge score)")


def parse_edge_universe(text):
    """``--edge-universe``: which edges the edge diagnostic (``--diagnose``, ``--stop theta``) bounds.
    ``None``/``"all"`` -> None (every edge of the model, ~10^6 on SmolLM2); ``"top:M"`` -> ("top", M): the M
    top-ranked edges of the first method's ranking; ``"readers:N"`` -> ("readers", N): every edge into the N
    readers (a query head, a key/value group, an MLP, the logits) with the largest summed edge score."""
    if text is None or str(text).strip().lower() in ("", "all"):
        return None
    name, _, value = str(text).strip().lower().partition(":")
    if name not in ("top", "readers") or not re.fullmatch(r"\s*[0-9]+\s*", value) or int(value) < 1:
        raise ValueError(f"cannot read --edge-universe {text!r}: use {EDGE_UNIVERSE_HELP}; e.g. top:20000 or readers:6")
    return (name, int(value))


def check_edge_universe(text, level: str, diagnose: bool, stop) -> None:
    """``--edge-universe`` is read, and used: it needs edges (--level edges or both) and an edge diagnostic."""
    if parse_edge_universe(text) is None:
        return
    if level == "nodes" or not (diagnose or is_theta(stop)):
        raise ValueError("--edge-universe restricts the edge diagnostic: use it with --level edges (or both) and "
                         "--diagnose or --stop theta")


def is_theta(stop) -> bool:
    """Whether ``stop`` is the ``--stop theta`` rule."""
    from ..diagnostics.theta import ThetaBelow

    return isinstance(stop, ThetaBelow)


def resolve_device(device: str) -> str:
    import torch

    name = str(device).lower()
    if name not in DEVICES and not re.fullmatch(r"cuda:\d+", name):
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")
    return name


def torch_dtype(name: str):
    import torch

    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def versions() -> dict:
    """Versions of Python and of the packages that decide the numbers."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("atpstar", "torch", "transformers", "numpy", "pandas", "pyarrow", "matplotlib"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
