"""atpstar: AtP* — find the model components that cause a behaviour, checked against exact patching."""

from . import tasks
from .cost import Cost, measure_backward_ratio
from .joint import JointPatcher, joint_patch
from .methods import METHODS, acp, atp
from .metrics import Metric
from .model import Model, load_model
from .nodes import NodeSet
from .pairs import PromptPairs
from .scores import Scores
from .types import ALL_KINDS, ATTENTION_KINDS, Node, NodeKind

__version__ = "0.1.0"
__all__ = ["ALL_KINDS", "ATTENTION_KINDS", "METHODS", "Cost", "JointPatcher", "Metric", "Model", "Node", "NodeKind",
           "NodeSet", "PromptPairs", "Scores", "acp", "atp", "joint_patch", "load_model", "measure_backward_ratio", "tasks"]
