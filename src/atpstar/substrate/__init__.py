"""The substrate: a Hugging Face causal LM made inspectable, and every run of it atpstar does.

Model loading (:mod:`.model`, any hub id, directory or GGUF file), the per-architecture table
(:mod:`.arch`), device and dtype placement (:mod:`.devices`), the registered attention function
that exposes q, k, v, probabilities and head outputs (:mod:`.attention`), capture and patch of every
node in one forward or backward (:mod:`.capture`), patched forward passes that skip unchanged layers
and positions (:mod:`.patching`), cost-aware batches (:mod:`.batching`), node sets patched jointly
(:mod:`.joint`), nodes as the units of a ranking (:mod:`.node_units`, :mod:`.node_patcher`), the measured backward/forward ratio (:mod:`.timing`) and ungrouped key/value heads (:mod:`.ungroup`).
Imports only the shared vocabulary (``atpstar.types``, ``nodes``, ``pairs``, ...).
"""

from .joint import JointPatcher, joint_patch
from .model import Model, load_model
from .ungroup import ungroup_kv
from .node_units import NodeUnits
from .timing import measure_backward_ratio

__all__ = ["JointPatcher", "Model", "NodeUnits", "joint_patch", "load_model", "measure_backward_ratio", "ungroup_kv"]
