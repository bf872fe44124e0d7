"""Verification (SPEC.md §7): exact patching of nodes in ranked order until a budget or stop rule.

:mod:`.loop` (``verify``, ``Budget``, ``Verification``), its batches (:mod:`.patcher`) and resumable
per-node store (:mod:`.store`), the stop rules (:mod:`atpstar.stopping`), what a ranking may be
(:mod:`.ranking`) and the study's measure, the cost of verified recall (:mod:`.recall`).
May import the diagnostic (the ``ThetaBelow`` stop rule, ``verify(diagnose=True)``), methods,
the substrate and the vocabulary.
"""

from .loop import Budget, Verification, verify
from .recall import recall_cost
from ..stopping import SmallEffects

__all__ = ["Budget", "SmallEffects", "Verification", "recall_cost", "verify"]
