"""The false-negative diagnostic (SPEC.md §9): how large could an unverified node's effect still be?

:mod:`.diagnostic` patches random subsets of the unverified nodes jointly (``diagnose``), :mod:`.theta`
is the ``ThetaBelow`` stop rule (one draw, re-bounded as nodes are verified), :mod:`.bound` turns the subsets' statistics into θ (pure math, no model),
:mod:`.diagnosis` is the result. Imports the substrate and the vocabulary only.
"""

from .diagnosis import Diagnosis
from .diagnostic import diagnose
from .theta import ThetaBelow

__all__ = ["Diagnosis", "ThetaBelow", "diagnose"]
