"""Whether a diagnostic's θ says anything about what was verified: the warning when it does not.

θ bounds every unverified unit's |effect|. When θ is not below the largest |effect| verification found,
the bound cannot rule out an unverified unit as large as the verified ones: it is true but useless, and
the run should say so rather than print it as a guarantee. One function for nodes and edges.
"""

from __future__ import annotations

import numpy as np

__all__ = ["largest_verified", "theta_warning"]


def theta_warning(theta: float, verified_effects, unit: str = "node", universe: str | None = None) -> str | None:
    """The warning when θ is not below the largest verified |effect| (None: θ rules something out).

    ``verified_effects``: the verified units' exact effects (an array, a Series, or a table with an
    ``effect_exact`` or ``effect`` column); nothing verified: None. ``unit``: "node" or "edge".
    ``universe``: the edge diagnostic's ``--edge-universe`` (None, "" or "all": every edge), which picks
    the remedy offered for edges."""
    if unit not in ("node", "edge"):
        raise ValueError(f"unit must be 'node' or 'edge', got {unit!r}")
    largest = largest_verified(verified_effects)
    if largest is None or not theta >= largest:
        return None
    return (f"the {unit} diagnostic's θ = {theta:.4g} is not below the largest verified |effect| ({largest:.4g}): "
            f"it rules out no {unit} as large as those verified; {_remedy(unit, universe)}")


def _remedy(unit: str, universe: str | None) -> str:
    if unit == "edge":
        return ("bound a part of the graph (--edge-universe top:M or readers:N) or raise --samples"
                if universe in (None, "", "all") else "raise --samples, or choose a smaller --edge-universe")
    return ("raise --samples, or bound fewer nodes (--kinds); atpstar.diagnostics.plan gives the θ a budget "
            "buys (docs/diagnostic.md, planning a diagnostic)")


def largest_verified(verified_effects) -> float | None:
    """The largest verified |effect| (``verified_effects`` as for :func:`theta_warning`; 0 when none is
    finite); None when nothing was verified."""
    effects = _effects(verified_effects)
    if effects is None or not len(effects):
        return None
    return float(np.nanmax(np.abs(effects))) if np.isfinite(effects).any() else 0.0


def _effects(verified) -> np.ndarray | None:
    """The verified effects as a float array (None when there are none)."""
    if verified is None:
        return None
    columns = getattr(verified, "columns", None)
    if columns is not None:
        column = "effect_exact" if "effect_exact" in columns else "effect"
        if column not in columns:
            return None
        verified = verified[column]
    return np.asarray(verified, dtype=np.float64).ravel()
