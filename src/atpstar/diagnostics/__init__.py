"""The false-negative diagnostic: how large could an unverified node's effect still be?

:mod:`.diagnostic` patches random subsets of the unverified nodes jointly (``diagnose``), :mod:`.theta`
is the ``ThetaBelow`` stop rule (one draw, re-bounded as nodes are verified), :mod:`.bound` turns the
subsets' statistics into θ (pure math, no model), :mod:`.diagnosis` is the result; :mod:`.edges`
(``diagnose_edges``) reads edges as :mod:`.diagnostic` reads nodes (``diagnose`` given an edge
verification goes there), :mod:`.subsets` is the body both run (the unverified units that move, their
subsets, the statistics) and :mod:`.sampling` the subset-patching loop and checkpoint under it.
:mod:`.planner` (``plan``) chooses a design and predicts its θ before any patching, :mod:`.defaults`
(``design``) is the one design the command line's --diagnose and --stop theta share, :mod:`.usefulness`
warns when θ rules out nothing verified, :mod:`.evidence` labels the suspects. Imports the edges, the
substrate and the vocabulary only.
"""

from .diagnosis import Diagnosis, EdgeDiagnosis
from .defaults import design
from .diagnostic import diagnose
from .edges import diagnose_edges
from .planner import Plan, plan
from .theta import ThetaBelow

__all__ = ["Diagnosis", "EdgeDiagnosis", "Plan", "ThetaBelow", "design", "diagnose", "diagnose_edges", "plan"]
