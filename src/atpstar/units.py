"""The units a method ranks — nodes, edges, and whatever comes next (groups of neurons, features) — as
one interface, so that verification (and everything built on a ranking) is written once.

A unit kind is bound to one run (model, prompt pairs) by :func:`bind`; the result, a :class:`Units`,
knows the run's universe of units and how to name, parse, identify, tabulate and patch them:

- ``universe()``: every unit of the run; ``ids(units)`` / ``from_ids(ids)``: a unique int64 id per unit
  (what checkpoints and caches are keyed by); ``names(units)`` / ``parse(items)``: printable names and
  back (lists of names, tables, sets); ``check(units)``: refuse units that do not exist in this run;
- ``presence(units)``: (N,) the fraction of the pairs whose prompts have each unit's position;
- ``ranking(obj)``: what verification needs from a method's output — the ranked units with the
  ranking's score and signed estimate (:class:`~atpstar.ranking.Ranking`);
- ``patcher(metric, units, batch_size, memory_mb)``: a :class:`UnitPatcher` — exact single-unit patches
  planned before they run (so a forward budget is honoured exactly), ``static(units)`` (units whose noise
  value equals their clean one on every pair: exact effect 0, never patched) and ``joint(units, sets)``
  (each set of units patched together);
- ``verified_frame(verification)``: the tidy table of a verification of these units.

A method's output names its unit kind in ``unit_kind`` (``Scores.unit_kind == "node"``,
``EdgeScores.unit_kind == "edge"``); the kinds themselves live next to their patching code (:mod:`atpstar.substrate.node_units`,
:mod:`atpstar.edges.units`), each registering itself in :data:`KINDS`. A new unit kind implements
:class:`Units` and :class:`UnitPatcher`, gives its scores a ``unit_kind`` name and registers its ``bind``
(docs/architecture.md).
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

from torch import Tensor

from .cost import Cost

KINDS: dict[str, Callable] = {}
"""Unit kind name -> ``bind(model, pairs, ranking) -> Units``; each kind's module registers itself on import."""


@runtime_checkable
class UnitPatcher(Protocol):
    """Exact patches of one unit kind on one run's prompt pairs, the clean and noise runs captured once."""

    model: object
    pairs: object
    metric: object
    capture_forward: float
    """Forward-pass equivalents per pair of the captures every patch builds on (nodes: 2, edges: 4)."""

    @property
    def captured(self) -> bool: ...

    capture_seconds: float

    def capture(self):
        """Run the captures now (if not yet), e.g. to time one forward pass."""

    def plan(self, units) -> list:
        """The batches that patch every unit of ``units`` alone on every pair that has it (nothing run yet)."""

    def cost(self, plans: list) -> float:
        """Forward-pass equivalents the planned batches will cost (all pairs together)."""

    def run(self, units, plans: list) -> tuple[Tensor, Tensor, Tensor]:
        """(N, pairs) float64 exact effects (NaN: a pair lacks the unit's position), and per unit the
        forward-pass equivalents and the seconds spent on it."""

    def static(self, units) -> Tensor:
        """(N,) bool: the unit's noise value equals its clean value on every pair (exact effect 0)."""

    def joint(self, units, sets) -> Tensor:
        """(sets, pairs) float64 effect of patching each set of ``units`` together (a (sets, N) bool matrix)."""

    def spent(self, wall: float) -> Cost:
        """The work this patcher did so far (captures and patches), ``wall`` seconds."""


@runtime_checkable
class Units(Protocol):
    """One unit kind bound to a run (model, prompt pairs)."""

    name: str
    """Singular name, e.g. ``"node"``, ``"edge"`` (messages, tables)."""
    plural: str

    def universe(self): ...

    def ids(self, units) -> Tensor: ...

    def from_ids(self, ids: Tensor): ...

    def names(self, units) -> list[str]: ...

    def parse(self, items): ...

    def check(self, units) -> None: ...

    def presence(self, units) -> Tensor: ...

    def ranking(self, obj): ...

    def patcher(self, metric, units, batch_size: int | None, memory_mb: float) -> UnitPatcher: ...

    def store_key(self, run_key: str) -> str:
        """The key of this run's store of verified units (a checkpoint of nodes is not one of edges)."""

    def verified_frame(self, verification): ...


def unit_of(ranking) -> str:
    """The unit kind a ranking (or a truth, a verified set) is made of: its own ``unit_kind`` (Scores, EdgeScores,
    NodeSet, EdgeSet, Verification); an edge table (``writer``/``reader`` columns, or edge names ``"a@t -> b@t"``
    and no ``kind`` column) or a list of edge names is edges; anything else nodes. The one place that tells
    them apart."""
    unit = getattr(ranking, "unit_kind", None)
    if isinstance(unit, str):
        return unit
    columns = getattr(ranking, "columns", None)
    if columns is not None:
        if {"writer", "reader"} <= set(columns):
            return "edge"
        named = "name" in columns and "kind" not in columns
        return "edge" if named and ranking["name"].astype(str).str.contains("->").any() else "node"
    if isinstance(ranking, (list, tuple)) and ranking and isinstance(ranking[0], str) and "->" in ranking[0]:
        return "edge"
    return "node"


def bind(model, pairs, ranking) -> Units:
    """The :class:`Units` of ``ranking``'s unit kind for this run."""
    unit = unit_of(ranking)
    if unit not in KINDS:
        raise ValueError(f"unknown unit kind {unit!r} of the ranking {type(ranking).__name__}; known: {sorted(KINDS)}")
    return KINDS[unit](model, pairs, ranking)
