"""The false-negative diagnostic (SPEC.md §9): how large could an unverified node's effect still be?

:mod:`.diagnostic` patches random subsets of the unverified nodes jointly (``diagnose``, and the
``ThetaBelow`` stop rule), :mod:`.bound` turns the subsets' statistics into θ (pure math, no model),
:mod:`.diagnosis` is the result. Imports the substrate and the vocabulary only.
"""

from .diagnosis import Diagnosis
from .diagnostic import ThetaBelow, diagnose

__all__ = ["Diagnosis", "ThetaBelow", "diagnose"]
