"""atpstar: AtP* — find the model components that cause a behaviour, checked against exact patching."""

from . import tasks
from .cost import Cost, measure_backward_ratio
from .diagnostic import Diagnosis, ThetaBelow, diagnose
from .joint import JointPatcher, joint_patch
from .methods import METHODS, acp, atp
from .metrics import Metric
from .model import Model, load_model
from .nodes import NodeSet
from .pairs import PromptPairs
from .recall import recall_cost
from .runfolder import load_run
from .scores import Scores
from .types import ALL_KINDS, ATTENTION_KINDS, Node, NodeKind
from .verify import Budget, SmallEffects, Verification, verify

__version__ = "0.1.0"
__all__ = ["ALL_KINDS", "ATTENTION_KINDS", "METHODS", "Budget", "Cost", "Diagnosis", "JointPatcher", "Metric", "Model", "Node", "NodeKind",
           "NodeSet", "PromptPairs", "Scores", "SmallEffects", "ThetaBelow", "Verification", "acp", "atp", "diagnose", "joint_patch", "load_model", "load_run",
           "measure_backward_ratio", "recall_cost", "tasks", "verify"]
