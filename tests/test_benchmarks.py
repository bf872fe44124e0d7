"""Benchmarks are code like the library: a package whose every module imports from the repository root
without ``sys.path`` edits (``python -m benchmarks.<name>``), stays under the size limit, and measures
peak memory and child processes through one helper (``benchmarks.isolated``); the library never
imports them."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import atpstar

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
MAX_LINES = 400
HELPER = BENCH / "isolated.py"
# what only the shared helper may use: child processes and the process's memory counters
PROCESS_AND_MEMORY = {"subprocess", "resource", "multiprocessing"}
MEMORY_COUNTERS = ("ru_maxrss", "VmHWM", "VmRSS", "/proc/self/statm", "clear_refs")


def bench_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(BENCH.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    return out


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def test_every_folder_of_benchmarks_is_a_package():
    folders = {p.parent for p in BENCH.rglob("*.py")} - {p for p in BENCH.rglob("__pycache__")}
    assert not [f for f in folders if not (f / "__init__.py").exists()]


def test_no_benchmark_module_over_the_size_limit():
    big = {name: n for name, path in bench_modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"benchmark modules over {MAX_LINES} lines (split them by idea, e.g. into a *lib package): {big}"


def test_no_benchmark_edits_sys_path():
    edits = []
    for name, path in bench_modules().items():
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                edits.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("addsitedir", "syspath_prepend"):
                edits.append(f"{name}:{node.lineno}")
    assert not edits, f"sys.path edits (import benchmarks.<module> from the repository root instead): {edits}"


def test_only_the_shared_helper_runs_children_and_reads_peak_memory():
    offenders = []
    for name, path in bench_modules().items():
        if path == HELPER:
            continue
        for node in ast.walk(tree(path)):
            if isinstance(node, ast.Import):
                offenders += [f"{name}: import {a.name}" for a in node.names if a.name.split(".")[0] in PROCESS_AND_MEMORY]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PROCESS_AND_MEMORY:
                offenders.append(f"{name}: from {node.module}")
        offenders += [f"{name}: {c}" for c in MEMORY_COUNTERS if c in path.read_text()]
    assert not offenders, f"use benchmarks.isolated (run_child, peak_of) instead: {offenders}"


def test_every_benchmark_module_imports_from_the_repository_root():
    """As ``python -m benchmarks.<name>`` does: a fresh interpreter in the repository root, the library
    on its usual path, nothing else added."""
    names = sorted(bench_modules())
    code = ("import importlib, pathlib\n"
            f"for name in {names!r}:\n"
            "    module = importlib.import_module(name)\n"
            f"    assert pathlib.Path(module.__file__).resolve().is_relative_to({str(BENCH)!r}), module.__file__\n"
            "print('imported', len(" + repr(names) + "))\n")
    src = str(Path(atpstar.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"imported {len(names)}" in proc.stdout


def test_the_library_never_imports_benchmarks():
    src = Path(atpstar.__file__).parent
    found = []
    for path in src.rglob("*.py"):
        for node in ast.walk(tree(path)):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            found += [f"{path.relative_to(src)}: {t}" for t in targets if t.split(".")[0] == "benchmarks"]
    assert not found, found
