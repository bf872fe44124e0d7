"""Cost accounting in forward-pass equivalents: what each method and stage spends.

Every method reports ``Scores.info["cost"]`` as a :class:`Cost`: the forward work and backward work
it did, each in *full passes over one prompt* (fractional when layers or positions were skipped),
the number of prompt pairs, and the wall-clock seconds. A backward pass is converted to forward
passes with a ratio **measured on the model and machine at hand** (:func:`atpstar.substrate.timing.measure_backward_ratio`),
never assumed. The study's unit is forward-pass equivalents **per prompt pair**: estimation cost
plus one unit per verified node, so that the oracle's cost of verifying the true top-k is k.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Cost:
    """Work done by one method call."""

    forward: float = 0.0
    """Full forward passes over one prompt (a batch of B rows counts B; skipped layers/positions reduce it)."""
    backward: float = 0.0
    """Full backward passes over one prompt (GradDrop's partial passes count their fraction)."""
    pairs: int = 1
    """Prompt pairs the work was spent on (the divisor of :meth:`per_pair`)."""
    seconds: float = 0.0
    """Wall-clock time."""
    backward_ratio: float | None = None
    """Time of one backward pass / one forward pass, measured during the run (None: no backward)."""

    def equivalents(self, backward_ratio: float | None = None) -> float:
        """Total forward-pass equivalents; ``backward_ratio`` overrides the one measured in the run."""
        ratio = self.backward_ratio if backward_ratio is None else backward_ratio
        if self.backward and ratio is None:
            raise ValueError("this cost has backward passes but no measured backward/forward ratio; pass backward_ratio=")
        return self.forward + self.backward * (ratio or 0.0)

    def per_pair(self, backward_ratio: float | None = None) -> float:
        """Forward-pass equivalents per prompt pair (the study's unit)."""
        return self.equivalents(backward_ratio) / max(self.pairs, 1)

    def __add__(self, other: "Cost") -> "Cost":
        ratio = self.backward_ratio if self.backward_ratio is not None else other.backward_ratio
        return Cost(self.forward + other.forward, self.backward + other.backward, max(self.pairs, other.pairs),
                    self.seconds + other.seconds, ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, info_or_cost) -> "Cost":
        """The Cost of a Scores, its ``info`` dict, a dict from :meth:`to_dict`, or a Cost."""
        if isinstance(info_or_cost, Cost):
            return info_or_cost
        info = getattr(info_or_cost, "info", info_or_cost)
        cost = info.get("cost", info) if isinstance(info, dict) else None
        if isinstance(cost, Cost):
            return cost
        if not isinstance(cost, dict) or "forward" not in cost:
            raise ValueError("no cost recorded: expected a Scores or info dict with a 'cost' entry")
        return cls(**{k: cost[k] for k in ("forward", "backward", "pairs", "seconds", "backward_ratio") if k in cost})
