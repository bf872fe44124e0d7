"""How much evidence stands behind each suspect of a diagnostic (its label in the suspects table).

A suspect is an unverified unit of large estimated |effect| ĉ = ê + d. That ranking says nothing about
how sure it is: at a cheap design the standard error can be as large as ĉ itself, and the top suspects
may have no effect at all. Each suspect gets a label from its own statistics:

- ``strong``: its simultaneous interval ``ĉ ± width`` (the one θ is made of, valid for every unit at
  once with probability ≥ 1 − δ) excludes 0: the diagnostic alone shows the effect is not 0;
- ``moderate``: |z| = |ĉ| / se ≥ 2 (two standard errors for this unit alone, no correction for the
  many units looked at), but the simultaneous interval holds 0;
- ``weak``: |z| < 2: the estimate is within the noise, the effect may be 0;
- ``none``: the unit was in no subset or in every one (no statistic).

``lower`` is the smallest |effect| the simultaneous interval allows (0 when it holds 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["LABELS", "label_suspects"]

LABELS = ("strong", "moderate", "weak", "none")
NOMINAL_Z = 2.0
"""|z| from which a unit's own interval (about 95%) excludes 0."""


def label_suspects(table: pd.DataFrame, width) -> pd.DataFrame:
    """``table`` (a diagnosis's suspects: columns ``effect``, ``se``, ``included``) with two more columns,
    ``lower`` and ``evidence`` (:data:`LABELS`, module docstring). ``width``: per row (or one number) the
    half-width of the simultaneous interval, f(δ) · se as the bound uses it."""
    missing = {"effect", "se", "included"} - set(table.columns)
    if missing:
        raise ValueError(f"the suspects table lacks column(s) {sorted(missing)}: pass Diagnosis.suspects or .table()")
    effect = table["effect"].to_numpy(dtype=np.float64)
    se = table["se"].to_numpy(dtype=np.float64)
    width = np.broadcast_to(np.asarray(width, dtype=np.float64), effect.shape)
    if (width < 0).any():
        raise ValueError("width must be non-negative (the half-width f(δ)·se of each unit's interval)")
    seen = np.isfinite(se) & np.isfinite(effect) & (table["included"].to_numpy() > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, np.abs(effect) / se, np.where(np.abs(effect) > 0, np.inf, 0.0))
    lower = np.where(seen, np.clip(np.abs(effect) - width, 0.0, None), 0.0)
    label = np.select([~seen, lower > 0, z >= NOMINAL_Z], ["none", "strong", "moderate"], "weak")
    return table.assign(lower=lower, evidence=label)
