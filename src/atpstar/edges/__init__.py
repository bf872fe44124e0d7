"""Edges (SPEC.md §11): AtP* on the computational graph, verified by exact edge patching.

- :mod:`.graph`: the vocabulary — writers (``embed``, ``L{ℓ}.head.H{h}`` or ``L{ℓ}.attn``, ``L{ℓ}.mlp``),
  readers (``L{ℓ}.q.H{h}``, ``L{ℓ}.k.G{g}``, ``L{ℓ}.v.G{g}``, ``L{ℓ}.mlp``, ``logits``), which edges exist;
- :mod:`.edgeset`: sets of edges as tensors ``(writer, reader, pos)``, their names;
- :mod:`.scores`: :class:`EdgeScores`, (W, R, T) tensors with rankings, tables and groupings;
- :mod:`.sites`, :mod:`.writes`: where writers write and readers read, per architecture; every write;
- :mod:`.reader_patch`, :mod:`.patching`: exact edge patching (the ground truth): :func:`edge_acp`
  (single edges), :class:`EdgePatcher` / :func:`edge_patch` (joint patches of edge sets);
- :mod:`.export`: the EAP-IG / MIB graph JSON of an edge table, TransformerLens hook names.
"""

from .edgeset import EdgeSet
from .graph import READER_KINDS, WRITER_KINDS, EdgeGraph, heads_additive
from .patching import EdgePatcher, edge_acp, edge_patch
from .scores import EdgeScores, edge_frame

__all__ = ["READER_KINDS", "WRITER_KINDS", "EdgeGraph", "EdgeScores", "EdgeSet", "EdgePatcher", "edge_acp", "edge_frame", "edge_patch", "heads_additive"]

from .export import eap_config, from_eap_graph, tl_edge_hooks, tl_hook, to_eap_graph, write_eap_json  # noqa: E402

__all__ += ["eap_config", "from_eap_graph", "tl_edge_hooks", "tl_hook", "to_eap_graph", "write_eap_json"]
