"""The run's verification and diagnostic stages, written once for every unit kind a run ranks.

A :class:`Lane` says where one unit kind's results go (stage names in run.json, files in the run folder,
attributes of the Context) and holds the few things that differ between kinds (which ranking is verified,
what the diagnostic is given, the words it prints); :func:`verify` and :func:`diagnose` do the rest
alike: the budget and stop rule (``--stop theta`` included), the diagnostic's design (:mod:`.design`: one
planner for ``--diagnose`` and ``--stop theta``) and its warning when θ rules out nothing verified, the
checkpoint an interrupted run resumes from, the records. :data:`NODES` and :data:`EDGES` are the lanes of ``--level nodes`` and ``edges``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from . import design as designs
from . import edge_stages
from ..checkpoint import load_checked
from .folder import atomic_write, save_frame
from .stages import Context, _plain


def _nothing(*args) -> None:
    return None


@dataclass(frozen=True)
class Lane:
    """One unit kind's place in a run and what differs in its verification and diagnostic."""

    unit: str
    """``"node"`` or ``"edge"``; the lane is skipped at the ``--level`` that leaves this kind out."""
    skip_level: str
    names: dict
    """Its run.json stages (``verify``, ``diagnose``), run-folder files (``verified``, ``diagnosis``,
    ``suspects``, ``verify.ckpt``, ``diagnose.ckpt``), Context attributes (``verification``, ``frame``,
    ``rule``) and run.json key (``meta``)."""
    ranking: Callable
    """ctx -> the ranking to verify (the first method's Scores or EdgeScores)."""
    diagnosed: Callable
    """ctx -> (what was verified, extra diagnose options) for a fresh diagnostic."""
    verifying: Callable = _nothing
    """ctx, stop rule -> None: more on a ``--stop theta`` rule, said before verifying."""
    verified: Callable = _nothing
    """ctx, Verification -> None: after verifying."""
    bounding: Callable = lambda ctx: ""
    """ctx -> words on the universe the diagnostic bounds."""
    statement: Callable = lambda ctx, d: d.statement
    extra: Callable = lambda ctx: {}
    """ctx -> more facts for the diagnosis summary and record."""
    count: Callable = designs.count_units
    """ctx, ranking, Verification or None -> the units the diagnostic bounds (None: before verifying)."""
    universe: Callable = lambda ctx: None
    """ctx -> the ``--edge-universe`` words the θ warning's remedy depends on (None: every unit)."""

    @property
    def plural(self) -> str:
        return self.unit + "s"

    def get(self, ctx: Context, what: str):
        return getattr(ctx, self.names[what])

    def set(self, ctx: Context, what: str, value) -> None:
        setattr(ctx, self.names[what], value)


def verify(ctx: Context, lane: "Lane") -> None:
    """Exact patching of the top of the lane's ranking, under the run's budget and stop rule (resumable)."""
    cfg = ctx.cfg
    plan = ctx.plan
    if cfg.level == lane.skip_level or not plan.verifies:
        return
    theta = plan.theta
    file = ctx.folder.stage(lane.names["verified"])
    if file.is_file() and (not (cfg.diagnose or theta) or ctx.folder.done(lane.names["diagnosis"])):
        import pandas as pd

        lane.set(ctx, "frame", pd.read_parquet(file))
        return
    from ..verification.loop import verify as run_verify

    ranking, stop = lane.ranking(ctx), plan.stop_rule()
    if theta:
        setup_theta(ctx, stop, ranking if plan.primary.atp else None, lane, ranking)
        lane.set(ctx, "rule", stop)
        lane.verifying(ctx, stop)
    what = "edge" if lane.unit == "edge" else cfg.methods[0]
    ctx.say(f"verifying the {what} ranking by exact {lane.unit} patching (budget {cfg.verify_budget}, stop {cfg.stop})...")
    checkpoint = ctx.folder.checkpoint(lane.names["verify.ckpt"])
    if checkpoint.exists():
        load_checked(checkpoint)  # a damaged file: a clear error, not torch's unpickling one
    v = run_verify(ctx.model, ctx.pairs, ranking, budget=plan.budget, stop=stop, checkpoint=checkpoint,
                   checkpoint_every=cfg.checkpoint_every, batch_size=cfg.batch_size, progress=ctx.progress)
    lane.set(ctx, "verification", v)
    lane.set(ctx, "frame", v.to_frame())
    save_frame(lane.get(ctx, "frame"), file)
    ctx.record(lane.names["verify"], **{lane.plural: len(v)}, stopped=v.stopped, cost=v.cost.to_dict(),
               per_pair=v.cost.per_pair(), seconds=v.cost.seconds, patched=v.patched, reused=v.reused,
               stop_index=v.stop_index)
    lane.verified(ctx, v)
    ctx.say(f"verified {len(v):,} {lane.plural} in {v.cost.seconds:.1f}s; stopped: {v.stopped}")


def diagnose(ctx: Context, lane: "Lane") -> None:
    """``--diagnose`` (or ``--stop theta``): bound the effects of the lane's unverified units (resumable)."""
    cfg = ctx.cfg
    rule = lane.get(ctx, "rule")
    theta = rule is not None and rule.last is not None and lane.get(ctx, "verification") is not None
    name = lane.names["diagnosis"]
    if cfg.level == lane.skip_level or not (cfg.diagnose or theta) or ctx.folder.done(name):
        return
    if lane.get(ctx, "frame") is None:
        raise ValueError("--diagnose needs verification: give --verify-budget (> 0) or --stop")
    words = lane.bounding(ctx)
    ctx.say(f"diagnostic: bounding the effects of the unverified {lane.plural}{f' ({words})' if words else ''}...")
    history = None
    if theta:  # --stop theta: its subsets, re-bounded for the final verification
        d, history = from_theta_rule(rule, lane.get(ctx, "verification"))
    else:
        d = _fresh(ctx, lane)
    if d.suspects is not None:
        save_frame(d.suspects, ctx.folder.stage(lane.names["suspects"]))
    statement, extra = lane.statement(ctx, d), lane.extra(ctx)
    frame = lane.get(ctx, "frame")
    design = designs.measured(ctx, lane.unit, d, frame)
    ctx.say(statement)
    if design.get("expected_theta") is not None:
        ctx.say(f"design, measured: {design['explanation']}")
    note = designs.warning(float(d.theta), frame, lane.unit, lane.universe(ctx))
    facts = {"design": design, "warning": note, **extra}
    summary = {**_plain(d.to_dict()), "statement": statement, "theta": float(d.theta), "delta": cfg.delta, **facts}
    if history is not None:
        summary["theta_history"] = history
    atomic_write(ctx.folder.stage(name), lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    ctx.meta[lane.names["meta"]] = {"statement": statement, "theta": float(d.theta), "delta": cfg.delta,
                                    "warning": note}
    ctx.record(lane.names["diagnose"], statement=statement, theta=float(d.theta), cost=d.cost.to_dict(),
               per_pair=d.cost.per_pair(), seconds=d.cost.seconds, **facts)


def _fresh(ctx: Context, lane: "Lane"):
    """A fresh diagnostic of what the verification left (resumable from its checkpoint); an AtP ranking's
    estimates are subtracted from the subsets (a baseline's are not per-unit predictions)."""
    from ..diagnostics.diagnostic import diagnose as run_diagnose

    cfg = ctx.cfg
    checkpoint = ctx.folder.checkpoint(lane.names["diagnose.ckpt"])
    if checkpoint.exists():
        load_checked(checkpoint)
    ranking = lane.ranking(ctx)
    plan = designs.choose(ctx, lane.unit, lane.count(ctx, ranking, lane.get(ctx, "verification")), stop=False)
    estimates = ranking if ctx.plan.primary.atp else None
    verified, extra = lane.diagnosed(ctx)
    return run_diagnose(ctx.model, ctx.pairs, verified, estimates=estimates, delta=cfg.delta, seed=cfg.seed,
                        checkpoint=checkpoint, checkpoint_every=cfg.checkpoint_every, batch_size=cfg.batch_size,
                        progress=ctx.progress, samples=plan.samples, p=plan.p, bound=plan.bound, **extra)


def setup_theta(ctx: Context, rule, estimates, lane: "Lane", ranking) -> None:
    """``--stop theta``: the run's design (:func:`.design.choose` for every ranked unit of the lane, at the
    rule's first check) and options (--delta, --seed) on the rule, and ``estimates`` (an AtP ranking's,
    else None) subtracted from its subsets."""
    cfg = ctx.cfg
    plan = designs.choose(ctx, lane.unit, lane.count(ctx, ranking, None), stop=True)
    rule.samples, rule.p, rule.delta = plan.samples, plan.p, cfg.delta
    rule.options["bound"] = plan.bound
    rule.options.update(seed=cfg.seed, batch_size=cfg.batch_size, estimates=estimates)


def from_theta_rule(rule, v):
    """The final diagnosis of a ``--stop theta`` verification ``v`` (nodes or edges): the rule's subsets
    re-bounded for the final verification, at the next check's level (no new patch), and the θ-vs-verified
    history for the report."""
    d = rule.last  # the last check's statement (it covers a superset of the units left now)
    if rule.last is not None and rule.history and rule.history[-1][0] < len(v.nodes):  # verified more since
        again = rule.rebound(v, rule.checks + 1)
        if again is not None and again.theta <= rule.last.theta:
            d = again
    history = [{"verified": int(k), "theta": float(t), "cost_per_pair": float(c)} for k, t, c in rule.history]
    return d, history


NODES = Lane("node", "edges", dict(
    verify="verify", diagnose="diagnose", verified="verified.parquet", diagnosis="diagnosis.json",
    suspects="suspects.parquet", **{"verify.ckpt": "verify.ckpt", "diagnose.ckpt": "diagnose.ckpt"},
    verification="verification", frame="verified", rule="theta_rule", meta="diagnostic"),
    ranking=lambda ctx: ctx.scores[ctx.cfg.methods[0]], diagnosed=lambda ctx: (ctx.verification, {}))
EDGES = Lane("edge", "nodes", dict(
    verify="verify:edges", diagnose="diagnose:edges", verified="verified-edges.parquet",
    diagnosis="edge-diagnosis.json", suspects="edge-suspects.parquet",
    **{"verify.ckpt": "verify-edges.ckpt", "diagnose.ckpt": "diagnose-edges.ckpt"},
    verification="edge_verification", frame="verified_edges", rule="edge_theta_rule", meta="edge_diagnostic"),
    ranking=lambda ctx: ctx.edge_scores, diagnosed=edge_stages.diagnosed, verifying=edge_stages.verifying,
    verified=edge_stages.verified, bounding=edge_stages.universe_words, statement=edge_stages.statement,
    extra=edge_stages.extra, count=edge_stages.count, universe=lambda ctx: ctx.cfg.edge_universe)


def verify_nodes(ctx: Context) -> None:
    verify(ctx, NODES)


def diagnose_nodes(ctx: Context) -> None:
    diagnose(ctx, NODES)


def verify_edges(ctx: Context) -> None:
    verify(ctx, EDGES)


def diagnose_edges(ctx: Context) -> None:
    diagnose(ctx, EDGES)
