"""atpstar: AtP* — find the model components that cause a behaviour, checked against exact patching.

The package is grouped by pipeline stage (docs/architecture.md): the shared vocabulary at the top
(``types``, ``nodes``, ``scores``, ``pairs``, ``metrics``, ``cost``, ...), then ``substrate/`` (model
runs), ``tasks/`` (prompt pairs), ``methods/`` (estimators), ``diagnose/``, ``verify/`` and ``run/``
(pipeline, run folder, report, command line). Every public name is importable from here.
"""

from . import tasks
from .cost import Cost
from .diagnostics import Diagnosis, EdgeDiagnosis, ThetaBelow, diagnose, diagnose_edges
from . import edges
from .edges import EdgeGraph, EdgeScores, EdgeSet
from .methods import METHODS, acp, atp
from .metrics import Metric
from .nodes import NodeSet
from .pairs import PromptPairs
from .run import load_run
from .scores import Scores
from .substrate import JointPatcher, Model, joint_patch, load_model, measure_backward_ratio, ungroup_kv
from .types import ALL_KINDS, ATTENTION_KINDS, Node, NodeKind
from .verification import Budget, SmallEffects, Verification, recall_cost, verify


__version__ = "0.1.0"
__all__ = ["ALL_KINDS", "ATTENTION_KINDS", "METHODS", "Budget", "Cost", "Diagnosis", "EdgeDiagnosis", "EdgeGraph", "EdgeScores", "EdgeSet", "JointPatcher", "Metric", "Model", "Node", "NodeKind",
           "NodeSet", "PromptPairs", "Scores", "SmallEffects", "ThetaBelow", "Verification", "acp", "atp", "diagnose", "diagnose_edges", "edges", "joint_patch", "load_model", "load_run", "ungroup_kv",
           "measure_backward_ratio", "recall_cost", "tasks", "verify"]
