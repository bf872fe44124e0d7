"""The whole method as one resumable run: prompt pairs → estimate → verify → diagnose → run folder.

Python users call it like the command line does::

    from atpstar.run.pipeline import RunConfig, run, resume
    folder = run(RunConfig(model="default", task="ioi", pairs=8, methods=["atp*"], diagnose=True), "runs/ioi")
    folder.nodes.head()            # the node table (see atpstar.run.folder)
    resume("runs/ioi")             # after Ctrl-C or a crash: finished stages are skipped

Each stage writes its result into the folder as soon as it finishes (``stages/``), and the long
ones (exact patching, verification) checkpoint as they go (``checkpoints/``); a resumed run loads
every finished stage and continues the unfinished one where its checkpoint left it. The prompt
pairs are saved too, so a resumed run never depends on the task data or pairs file again.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import options as opts
from .folder import EDGES_CSV, EDGES_PARQUET, FAITHFULNESS_CSV, FORMAT, NODES_CSV, NODES_PARQUET, REPORT, RunDir, RunFolder
from .folder import load_run


@dataclass
class RunConfig:
    """Every option of a run (all recorded in run.json). See ``atpstar run --help`` for each one."""

    model: str = "default"
    task: str = "ioi"
    pairs: int | None = None
    """Pairs to build (built-in tasks; default 8) or to keep from a pairs file (default: all)."""
    methods: list = field(default_factory=lambda: ["atp*"])
    """Methods to run; the first one's ranking is verified. With ``acp`` among them (exact patching of
    every node) the run has ground truth, and the report draws each method's recall-vs-cost curve."""
    bos: bool = True
    """Put the model's beginning-of-sequence token in front of every prompt (position 0), as TransformerLens
    does; False: the prompts start with their first word (a warning if clean and noise differ there)."""
    kinds: str = "all"
    level: str = "nodes"
    """``nodes``, ``edges`` (writer -> reader at one position) or ``both``."""
    verify_budget: str | None = "100"
    """Forward-pass equivalents per pair (``"100"``), verified nodes (``"50nodes"``), seconds (``"60s"``),
    or ``"0"``/``None``: no verification."""
    stop: str | None = None
    """``"small-effects[:window=W,threshold=T,relative=R]"`` or None."""
    diagnose: bool = False
    faithfulness: bool = False
    """Score the first method's edge ranking by circuit faithfulness (MIB's curves, CPR, CMD, the smallest
    80 % / 90 % circuits), exact effects where edges were verified; needs ``level`` edges or both."""
    edge_universe: str | None = None
    """The edges the edge diagnostic bounds: None/``"all"``, ``"top:M"`` or ``"readers:N"`` (:func:`.options.parse_edge_universe`)."""
    samples: int | None = None
    p: float | None = None
    delta: float = 0.05
    device: str = "cpu"
    dtype: str = "float32"
    seed: int = 0
    batch_size: int | None = None
    checkpoint_every: float = 30.0
    """Seconds between checkpoint saves of exact patching and verification."""

    def validate(self) -> "RunConfig":
        """Check every option before any work (raises ValueError saying what to do)."""
        self.plan()
        return self

    def plan(self):
        """Every option checked and parsed once: a :class:`~.plan.Plan` (methods, budget, stop rule, edge universe)."""
        from .plan import make_plan

        return make_plan(self)

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, values: dict) -> "RunConfig":
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def prepare(out, force: bool = False) -> RunDir:
    """Create the run folder, refusing to overwrite: an existing folder is reused only if it is empty,
    or (``force=True``) if it is an atpstar run folder, whose files are then deleted."""
    folder = RunDir(out)
    path = folder.path
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--out {path} is a file; give a folder path for the run")
    if path.is_dir() and any(path.iterdir()):
        if not folder.is_run():
            raise FileExistsError(f"{path} exists and is not an atpstar run folder; choose another --out "
                                  "(nothing was written)")
        if not force:
            raise FileExistsError(f"{path} already holds a run: continue it with `atpstar resume {path}`, "
                                  "or pass --force to delete it and start over")
        _clear(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write the run folder {path}: {err.strerror or err}; choose another --out") from None
    return folder


def _clear(folder: RunDir) -> None:
    for name in ("stages", "checkpoints"):
        shutil.rmtree(folder / name, ignore_errors=True)
    for name in ("run.json", NODES_PARQUET, NODES_CSV, EDGES_PARQUET, EDGES_CSV, FAITHFULNESS_CSV, REPORT):
        (folder / name).unlink(missing_ok=True)


def run(config: RunConfig, out, progress: bool = True, force: bool = False, echo=None) -> RunFolder:
    """Run the pipeline into the folder ``out`` (created; see :func:`prepare`) and return it loaded."""
    plan = config.plan()
    fresh = not Path(out).exists() or (Path(out).is_dir() and not any(Path(out).iterdir()))
    folder = prepare(out, force)
    meta = {"format": FORMAT, "status": "new", "config": config.to_dict(), "versions": opts.versions(),
            "stages": {}}
    folder.write_meta(meta)
    try:
        return _execute(folder, meta, plan, progress, echo)
    except Exception:
        if fresh and not any((folder / "stages").glob("*")):  # failed before any result (bad input): leave no folder
            shutil.rmtree(folder.path, ignore_errors=True)
        raise


def resume(out, progress: bool = True, echo=None, batch_size: int | None = None) -> RunFolder:
    """Continue the run in ``out`` (interrupted, crashed or finished) with no finished work redone.
    ``batch_size`` replaces the run's (it changes memory use, not results: e.g. after running out of memory)."""
    folder = RunDir(out)
    meta = folder.read_meta()
    if batch_size is not None:
        meta.setdefault("config", {})["batch_size"] = batch_size
    config = RunConfig.from_dict(meta.get("config", {}))
    return _execute(folder, meta, config.plan(), progress, echo)


def _execute(folder: RunDir, meta: dict, plan, progress: bool, echo) -> RunFolder:
    from .edge_stages import edges
    from .faithfulness_stage import faithfulness
    from .stages import Context, estimate, load, make_pairs, report, tables
    from .unit_stages import diagnose_edges, diagnose_nodes, verify_edges, verify_nodes

    ctx = Context(RunConfig.from_dict(meta["config"]), folder, meta, progress, echo or (lambda msg: None), plan)
    meta["status"] = "running"
    meta.pop("error", None)
    folder.write_meta(meta)
    try:
        for stage in (load, make_pairs, estimate, verify_nodes, diagnose_nodes, edges, verify_edges, diagnose_edges,
                      faithfulness, tables):
            stage(ctx)
    except KeyboardInterrupt:
        meta["status"] = "interrupted"
        folder.write_meta(meta)
        raise
    except BaseException as err:
        meta["status"] = "failed"
        meta["error"] = f"{type(err).__name__}: {err}"
        folder.write_meta(meta)
        raise
    meta["status"] = "done"
    folder.write_meta(meta)
    report(ctx)
    return load_run(folder.path)


__all__ = ["RunConfig", "load_run", "prepare", "resume", "run"]
