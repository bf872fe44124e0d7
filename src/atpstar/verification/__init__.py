"""Verification: exact patching of the units of a ranking (nodes or edges) in ranked order until a
budget or stop rule.

:mod:`.loop` (``verify``), its result and limits (:mod:`.result`: ``Verification``, ``Budget``) and its
resumable per-unit store (:mod:`.store`); the units themselves (ids, names, patchers) come from
:mod:`atpstar.units`, the stop rules from :mod:`atpstar.stopping`, what a ranking may be from
:mod:`atpstar.ranking`; the study's measure, the cost of verified recall (:mod:`.recall`).
May import the diagnostic (the ``ThetaBelow`` stop rule, ``verify(diagnose=True)``), methods,
the substrate and the vocabulary.
"""

from .loop import verify
from .result import Budget, Verification
from .recall import recall_cost
from ..stopping import SmallEffects

__all__ = ["Budget", "SmallEffects", "Verification", "recall_cost", "verify"]
