"""A run's options parsed once, before the model loads, into typed objects the stages read: the methods
(rows of :data:`.registry.RUN_METHODS`), the verification budget (a :class:`~atpstar.verification.Budget`),
the stop rule (an object) and the edge universe. No stage parses an option string again."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from . import options as opts
from .registry import RUN_METHODS, RunMethod


@dataclass(frozen=True)
class Plan:
    methods: tuple
    """The :class:`~.registry.RunMethod` rows of ``--method``; the first one's ranking is verified."""
    budget: object
    """The verification :class:`~atpstar.verification.Budget`, or None."""
    stop: object
    """The stop rule (``SmallEffects``, ``ThetaBelow``), or None; each verification gets its own copy
    (:meth:`stop_rule`), since a rule keeps state as it checks."""
    edge_universe: tuple | None
    """``("top", M)``, ``("readers", N)`` or None (every edge)."""
    faithfulness: bool = False
    """``--faithfulness``: the faithfulness stage scores the first method's edge ranking (it needs edges)."""

    @property
    def primary(self) -> RunMethod:
        return self.methods[0]

    @property
    def verifies(self) -> bool:
        return self.budget is not None or self.stop is not None

    def stop_rule(self):
        """A fresh copy of the stop rule for one verification (None: none)."""
        return copy.deepcopy(self.stop)

    @property
    def theta(self) -> bool:
        """``--stop theta``: the diagnostic's θ stops verification."""
        return opts.is_theta(self.stop)


def make_plan(cfg) -> Plan:
    """Check every option of ``cfg`` (a RunConfig) and parse each once (raises ValueError saying what to do)."""
    opts.check_model_spec(cfg.model)
    opts.check_task(cfg.task)
    if cfg.pairs is not None:
        opts.check_int("pairs", cfg.pairs, 1)
    if not isinstance(cfg.bos, bool):
        raise ValueError(f"bos must be True or False (the model's beginning-of-sequence token in front of "
                         f"every prompt, or not), got {cfg.bos!r}")
    cfg.methods = opts.parse_methods(cfg.methods)
    opts.parse_kinds(cfg.kinds)
    opts.check_level(cfg.level, cfg.methods, cfg.diagnose)
    budget = opts.budget_object(opts.parse_budget(cfg.verify_budget))  # Budget checks its own range
    stop = opts.parse_stop(cfg.stop)
    if cfg.diagnose and budget is None and stop is None:
        raise ValueError("--diagnose bounds the nodes left unverified, so it needs verification: give "
                         "--verify-budget (> 0) or --stop")
    opts.check_diagnostic(cfg.samples, cfg.p, cfg.delta)
    opts.check_edge_universe(cfg.edge_universe, cfg.level, cfg.diagnose, stop)
    opts.resolve_device(cfg.device)
    opts.torch_dtype(cfg.dtype)
    opts.check_int("seed", cfg.seed, 0)
    if cfg.batch_size is not None:
        opts.check_int("batch_size", cfg.batch_size, 1)
    if not (isinstance(cfg.checkpoint_every, (int, float)) and cfg.checkpoint_every >= 0):
        raise ValueError(f"checkpoint_every must be seconds >= 0, got {cfg.checkpoint_every!r}")
    faithfulness = opts.check_faithfulness(cfg.faithfulness, cfg.level)
    methods = tuple(RUN_METHODS[m] for m in cfg.methods)
    return Plan(methods, budget, stop, opts.parse_edge_universe(cfg.edge_universe), faithfulness=faithfulness)
