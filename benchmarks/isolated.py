"""Measurements in a fresh process, with their time and peak memory: the one helper every benchmark
that reports a peak uses.

Peak resident memory is per process, so a measurement whose peak is reported runs in its own child
(:func:`run_child`: ``python -m benchmarks.<name> ...`` from the repository root), which answers with
one ``RESULT {json}`` line (:func:`answer`). Inside it, :func:`peak_of` times a call and reports the
growth of the peak RSS above the RSS just before the call: on Linux the peak (``VmHWM``) is reset to
the current RSS first (``/proc/self/clear_refs``), so earlier work (loading, warm-up) does not count;
elsewhere the peak is ``ru_maxrss``, which cannot be reset (``Peak.reset`` is False).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The repository root: where ``python -m benchmarks.<name>`` runs."""
RESULT = "RESULT "


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_mb() -> float:
    """This process's resident memory now, in MiB."""
    now = _status_mb("VmRSS")
    if now is None:
        import psutil

        now = psutil.Process().memory_info().rss / 2**20
    return now


def peak_mb() -> float:
    """This process's peak resident memory, in MiB (since the last :func:`reset_peak`, where it worked)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Peak:
    base_mb: float
    """RSS just before the measured call."""
    peak_mb: float
    """Peak RSS during it (from the process start where ``reset`` is False)."""
    reset: bool

    @property
    def growth_mb(self) -> float:
        """What the measured call added to the resident memory at its peak."""
        return self.peak_mb - self.base_mb


def peak_of(fn):
    """``(fn(), seconds, Peak)``: the call's result, wall-clock time and peak memory growth."""
    reset = reset_peak()
    base = current_mb()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, Peak(base, peak_mb(), reset)


def best_of(fn, repeat: int) -> float:
    """The shortest of ``repeat`` timed calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def answer(result: dict) -> None:
    """A child's answer to :func:`run_child`: one ``RESULT`` line of JSON on stdout."""
    print(RESULT + json.dumps(result, default=float), flush=True)


def run_child(module: str, argv, threads: int = 1, env: dict | None = None) -> dict:
    """Run ``python -m <module> <argv>`` in a fresh process from the repository root, with
    ``OMP_NUM_THREADS=threads`` and the extra ``env``, and return the dict of its :func:`answer`."""
    cmd = [sys.executable, "-m", module, *map(str, argv)]
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit status {proc.returncode}, {len(lines)} answers):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


@dataclass(frozen=True)
class Command:
    """A command run to its end in a child process, as a user runs it."""
    seconds: float
    """Wall-clock time from start to exit."""
    peak_gb: float
    """The child's own peak resident memory."""
    returncode: int
    stdout: str
    stderr: str


def run_command(argv: list[str], env: dict | None = None) -> Command:
    """Run ``argv`` (e.g. ``[sys.executable, "-m", "atpstar", "demo"]``) from the repository root with the
    extra ``env`` and ``PYTHONPATH=src``, to its end: its time, its own peak memory, status and output."""
    import tempfile

    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(env or {})}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, env=full_env, cwd=ROOT, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, not the largest of all children
        seconds = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Command(seconds, usage.ru_maxrss / 2**20, child.returncode, out.read(), err.read())
