"""What a verification returns (:class:`Verification`, of nodes or edges alike) and what limits it
(:class:`Budget`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import Tensor

from ..cost import Cost

__all__ = ["Budget", "Verification"]


@dataclass(frozen=True)
class Budget:
    """Limits on a verification; any combination. ``forward``: measured forward-pass equivalents per
    prompt pair, the captures included (never exceeded; nodes: the clean and noise runs, 2 per pair;
    edges: 4 per pair). ``nodes``: verified units, nodes or edges (never exceeded). ``seconds``: checked before each chunk (may be exceeded by one chunk).
    Limits bound the whole result, ``prior`` nodes included."""

    forward: float | None = None
    seconds: float | None = None
    nodes: int | None = None

    def __post_init__(self) -> None:
        if self.forward is None and self.seconds is None and self.nodes is None:
            raise ValueError("Budget needs at least one of forward= (forward-pass equivalents per pair), "
                             "seconds= or nodes=; pass budget=None for no budget")
        for name in ("forward", "seconds"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"Budget {name} must be a positive number, got {value!r}; e.g. "
                                 f"budget=atpstar.Budget({name}={50 if name == 'forward' else 600})")
        if self.nodes is not None and (not isinstance(self.nodes, int) or isinstance(self.nodes, bool) or self.nodes < 1):
            raise ValueError(f"Budget nodes must be a positive integer (verified nodes or edges), got {self.nodes!r}; "
                             "e.g. budget=atpstar.Budget(nodes=100)")
        if self.forward is not None and self.forward <= 2:
            raise ValueError(f"Budget forward={self.forward} per pair cannot pay for the clean and noise runs "
                             "(2 forward passes per pair) and any patch; verifying n nodes costs about 2 + n, "
                             "n edges about 4 + n")

    @classmethod
    def parse(cls, budget) -> "Budget | None":
        if budget is None or isinstance(budget, Budget):
            return budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise TypeError(f"budget must be a Budget, a number (forward-pass equivalents per pair) or None, "
                            f"got {type(budget).__name__} {budget!r}; e.g. budget=atpstar.Budget(nodes=100)")
        return cls(forward=budget)


@dataclass
class Verification:
    """Units (nodes or edges) of a ranking verified by exact patching, in rank order (a prefix of it)."""

    ranking: object
    """The whole ranking, in ranked order (a NodeSet, an EdgeSet: see :attr:`unit`)."""
    nodes: object
    """The verified units, nodes or edges (the name stop rules and the diagnostic read): the first
    ``len(nodes)`` of the ranking."""
    per_pair: Tensor
    """(V, pairs) float64 exact effect per pair (NaN: the unit's position is absent from that pair's prompt)."""
    effect: Tensor
    """(V,) float64 exact mean effect over the pairs that have the node."""
    estimate: Tensor
    """(V,) the ranking's signed estimate of the mean effect (NaN if it gave none)."""
    score: Tensor
    """(V,) the ranking's score (NaN if it gave none)."""
    rank: Tensor
    """(V,) 0-based rank of each verified node in the ranking."""
    node_cost: Tensor
    """(V,) measured forward-pass equivalents spent patching each node (all pairs together)."""
    node_seconds: Tensor
    """(V,) seconds spent patching each node."""
    cost: Cost
    """Measured cost of this verification (captures + every verified node), see the module docs."""
    spent: Cost
    """Work done by the call that returned this result (0 for nodes reused from a checkpoint or prior)."""
    stopped: str
    """Why verification stopped: ``"budget"``, ``"exhausted"`` or a stop rule's reason."""
    stop_index: int
    """Verified units when it stopped: a stop rule's exact point; units after it were paid for in the same chunk."""
    key: str
    """``atpstar.checkpoint.run_key(model, pairs, metric)``: the run these effects belong to."""
    patched: int = 0
    """Nodes patched by this call."""
    reused: int = 0
    """Nodes taken from the checkpoint or ``prior`` without patching."""
    wall_seconds: float = 0.0
    """Wall-clock seconds of this call."""
    model: object = field(default=None, repr=False, compare=False)
    pairs: object = field(default=None, repr=False, compare=False)
    metric: object = field(default=None, repr=False, compare=False)
    diagnosis: object = field(default=None, repr=False, compare=False)
    """The false-negative diagnostic (:class:`~atpstar.diagnostics.diagnosis.Diagnosis`) of ``verify(..., diagnose=...)``."""
    unit: object = field(default=None, repr=False, compare=False)
    """The unit kind bound to this run (:class:`atpstar.units.Units`): names, ids, tables of the units."""

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def unit_kind(self) -> str:
        """The kind of the verified units, ``"node"`` or ``"edge"`` (:mod:`atpstar.units`)."""
        return "node" if self.unit is None else self.unit.name

    @property
    def verified_mask(self) -> Tensor:
        """(len(ranking),) bool: which ranking entries are verified."""
        mask = torch.zeros(len(self.ranking), dtype=torch.bool)
        mask[self.rank] = True
        return mask

    @property
    def paper_cost(self) -> Cost:
        """The paper's unit: one forward pass per verified node per pair (pairs lacking the node's position
        excluded), so ``paper_cost.per_pair()`` is the number of verified nodes."""
        return Cost(forward=float(self.per_pair.isfinite().sum()), pairs=self.per_pair.shape[1], seconds=self.cost.seconds)

    @property
    def edges(self):
        """The verified edges (an edge verification only)."""
        self._need("edge")
        return self.nodes

    @property
    def graph(self):
        """The :class:`~atpstar.edges.EdgeGraph` of the verified edges (an edge verification only)."""
        self._need("edge")
        return self.unit.graph

    def _need(self, kind: str) -> None:
        if self.unit is None or self.unit.name != kind:
            raise AttributeError(f"this is a verification of {getattr(self.unit, 'plural', 'nodes')}, not of {kind}s")

    def to_frame(self) -> pd.DataFrame:
        """One row per verified unit, in rank order. Nodes: kind, layer, unit, pos, name, rank (0-based),
        effect (exact mean), mean_abs, score (= |effect|), estimate and estimate_score (the ranking's), cost
        (forward-pass equivalents per pair spent on it), before_stop. Edges: rank (1-based), the tidy edge
        columns (name, writer, reader, pos, ...), score and effect (the ranking's), effect_exact."""
        return self.unit.verified_frame(self)

    def __repr__(self) -> str:
        return (f"Verification({len(self.nodes)} of {len(self.ranking)} {self.unit.plural}, stopped: {self.stopped}, "
                f"{self.cost.per_pair():.1f} forward equivalents per pair ({self.paper_cost.per_pair():.0f} in the "
                f"paper's unit), {self.cost.seconds:.1f}s)")
