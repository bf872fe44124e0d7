"""The stages of a run (:mod:`atpstar.run.pipeline`), in order. Each one skips itself when its result is
already in the run folder, so that running them all again resumes an interrupted run."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

import torch

from . import options as opts
from .registry import RUN_METHODS
from ..cost import Cost
from .folder import EDGES_CSV, EDGES_PARQUET, NODES_CSV, NODES_PARQUET, RunDir, atomic_write, display_tokens
from .folder import edge_table, load_pairs, load_scores, method_slug, node_table
from .folder import save_frame, save_pairs, save_scores

DEFAULT_PAIRS = 8


@dataclass
class Context:
    """What the stages share: the options, the folder, run.json's contents and the loaded objects."""

    cfg: object
    folder: RunDir
    meta: dict
    progress: bool
    echo: object
    plan: object = None
    """The run's options parsed once (:class:`~atpstar.run.plan.Plan`)."""
    model: object = None
    pairs: object = None
    scores: dict = field(default_factory=dict)
    verification: object = None
    verified: object = None
    diagnosis: object = None
    theta_rule: object = None
    """The ``--stop theta`` rule once verification ran: its subsets serve the diagnostic too."""
    edge_scores: object = None
    verified_edges: object = None
    edge_verification: object = None
    edge_theta_rule: object = None
    """``--stop theta`` on edges: the rule once edge verification ran (its subsets serve the edge diagnostic)."""
    designs: dict = field(default_factory=dict)
    """The diagnostic's design per unit kind ("node", "edge"), as :mod:`.design` chose and recorded it."""

    def say(self, message: str) -> None:
        self.echo(message)

    def record(self, stage: str, **info) -> None:
        """Store a finished stage's facts in run.json (written at once)."""
        self.meta["stages"][stage] = {**self.meta["stages"].get(stage, {}), **info, "done": True}
        self.folder.write_meta(self.meta)

    def done(self, stage: str) -> bool:
        return bool(self.meta["stages"].get(stage, {}).get("done"))


def weights_sha256(model) -> str:
    """SHA-256 of every tensor of the model's state dict (names and bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.hf.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load(ctx: Context) -> None:
    from ..substrate.model import load_model

    cfg = ctx.cfg
    device = opts.resolve_device(cfg.device)
    ctx.say(f"loading model {cfg.model} ({cfg.dtype} on {device})...")
    t0 = time.perf_counter()
    ctx.model = load_model(cfg.model, dtype=opts.torch_dtype(cfg.dtype), device=device)
    digest = weights_sha256(ctx.model)
    saved = ctx.meta.get("model", {}).get("weights_sha256")
    if saved and saved != digest:
        raise ValueError(f"the weights of model {cfg.model!r} differ from those this run started with "
                         f"(sha256 {saved[:12]}..., now {digest[:12]}...): resume with the same model, or start a new run")
    ctx.meta["model"] = {"spec": cfg.model, "name": ctx.model.name, "description": ctx.model.describe(),
                         "weights_sha256": digest, "device": device, "dtype": cfg.dtype}
    ctx.say(f"model: {ctx.model.describe()} (loaded in {time.perf_counter() - t0:.1f}s)")


def make_pairs(ctx: Context) -> None:
    from .. import tasks
    from ..sink import first_position_differs, starts_with_bos

    cfg, file = ctx.cfg, ctx.folder.stage("pairs.pt")
    if file.is_file():
        ctx.pairs = load_pairs(file)
    else:
        pairs = tasks.load(cfg.task, ctx.model, n=cfg.pairs, seed=cfg.seed, bos=cfg.bos, default_n=DEFAULT_PAIRS)
        pairs.check_vocab(ctx.model.vocab_size)
        save_pairs(pairs, file)
        ctx.pairs = pairs
    tokens, index = display_tokens(ctx.model, ctx.pairs)
    lengths = ctx.pairs.lengths
    ctx.record("pairs", n=len(ctx.pairs), lengths=[min(lengths), max(lengths)], metric=_metric_name(ctx.pairs),
               texts=[list(t) for t in ctx.pairs.texts[:3]], tokens=tokens, display_pair=index,
               bos=starts_with_bos(ctx.model, ctx.pairs), first_token_differs=len(first_position_differs(ctx.pairs)))
    example = f"; e.g. {ctx.pairs.texts[0][0]!r} vs {ctx.pairs.texts[0][1]!r}" if ctx.pairs.texts else ""
    ctx.say(f"pairs: {len(ctx.pairs)} from {cfg.task} (metric {_metric_name(ctx.pairs)}){example}")


def _metric_name(pairs) -> str:
    from ..metrics import resolve

    return resolve(None, pairs).name


def estimate(ctx: Context) -> None:
    if ctx.cfg.level == "edges":
        return
    for method in ctx.cfg.methods:
        file = ctx.folder.stage(f"scores-{method_slug(method)}.pt")
        if file.is_file():
            ctx.scores[method] = load_scores(file)
            continue
        ctx.say(f"estimating with {method} over {ctx.cfg.kinds} nodes...")
        scores = run_method(ctx, method)
        save_scores(scores, file)
        ctx.scores[method] = scores
        cost = Cost.of(scores)
        ctx.record(f"estimate:{method}", cost=cost.to_dict(), per_pair=cost.per_pair(), seconds=cost.seconds,
                   nodes=sum(int(s.isfinite().sum()) for s in scores.score.values()), info=_plain(scores.info))
        ctx.say(f"{method}: {ctx.meta['stages'][f'estimate:{method}']['nodes']:,} nodes in {cost.seconds:.1f}s "
                f"({cost.per_pair():.1f} forward-pass equivalents per pair)")


def run_method(ctx: Context, method: str):
    """``method``'s Scores over the run's node kinds (exact patching resumes from its checkpoint)."""
    cfg, spec = ctx.cfg, RUN_METHODS[method]
    options = spec.options(seed=cfg.seed, batch_size=cfg.batch_size)
    if method == "acp":
        options.update(checkpoint=ctx.folder.checkpoint("acp.ckpt"), checkpoint_every=cfg.checkpoint_every)
    return spec.node_function()(ctx.model, ctx.pairs, kinds=cfg.kinds, progress=ctx.progress, **options)


def tables(ctx: Context) -> None:
    """The run's tables, one per unit kind it ranks (nodes.parquet/.csv, edges.parquet/.csv)."""
    tokens = ctx.meta["stages"]["pairs"]["tokens"]
    facts = {}
    kinds = (("node", "edges", lambda: node_table(ctx.scores, ctx.cfg.methods[0], ctx.verified, tokens),
              NODES_PARQUET, NODES_CSV, "rows"),
             ("edge", "nodes", lambda: edge_table(ctx.edge_scores, ctx.verified_edges, tokens),
              EDGES_PARQUET, EDGES_CSV, "edge_rows"))
    for unit, skip_level, table, parquet, csv, fact in kinds:
        if ctx.cfg.level == skip_level:
            continue
        ctx.say(f"writing the {unit} table...")
        frame = table()
        save_frame(frame, ctx.folder / parquet)
        atomic_write(ctx.folder / csv, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
        facts[fact] = len(frame)
    ctx.meta["costs"] = costs(ctx.meta)
    ctx.record("tables", **facts)


def costs(meta: dict) -> dict:
    """Forward-pass equivalents per pair and seconds of each stage, and of estimate + verify (+ diagnose)."""
    out = {name: {"per_pair": info.get("per_pair"), "seconds": info.get("seconds")}
           for name, info in meta["stages"].items() if "per_pair" in info}
    out["total"] = {k: sum(v[k] or 0.0 for v in out.values()) for k in ("per_pair", "seconds")}
    return out


def report(ctx: Context) -> None:
    """Not a stage: written after the run is marked done (``atpstar report DIR`` rebuilds it)."""
    from .report import write_report

    path = write_report(ctx.folder.path)
    ctx.say(f"report: {path}")


def _plain(value):
    """JSON-safe copy (Costs, tensors and numpy numbers made plain)."""
    from .folder import _jsonable

    return json.loads(json.dumps(value, default=_jsonable))
