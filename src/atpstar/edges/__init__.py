"""Edges (SPEC.md §11): AtP* on the computational graph, verified by exact edge patching.

- :mod:`.graph`: the vocabulary — writers (``embed``, ``L{ℓ}.head.H{h}`` or ``L{ℓ}.attn``, ``L{ℓ}.mlp``),
  readers (``L{ℓ}.q.H{h}``, ``L{ℓ}.k.G{g}``, ``L{ℓ}.v.G{g}``, ``L{ℓ}.mlp``, ``logits``), which edges exist;
- :mod:`.edgeset`: sets of edges as tensors ``(writer, reader, pos)``, their names;
- :mod:`.scores`: :class:`EdgeScores`, (W, R, T) tensors with rankings, tables and groupings;
- :mod:`.sites`, :mod:`.writes`: where writers write and readers read, per architecture; every write;
- :mod:`.reader_patch`, :mod:`.patching`: exact edge patching (the ground truth): :func:`edge_acp`
  (single edges), :class:`EdgePatcher` / :func:`edge_patch` (joint patches of edge sets);
- :mod:`.reader_grads`, :mod:`.atp`: :func:`atp` (also ``edge_atp``) — edge AtP, +QK fix, +GradDrop, AtP*.
"""

from .atp import atp
from .edgeset import EdgeSet
from .graph import READER_KINDS, WRITER_KINDS, EdgeGraph, heads_additive
from .patching import EdgePatcher, edge_acp, edge_patch
from .scores import EdgeScores, edge_frame

edge_atp = atp

__all__ = ["READER_KINDS", "WRITER_KINDS", "EdgeGraph", "EdgeScores", "EdgeSet", "EdgePatcher", "atp", "edge_acp", "edge_atp", "edge_frame", "edge_patch", "heads_additive"]

from .export import (eap_config, eap_graph_of, from_eap_graph, mib_folder_name, tl_edge_hooks, tl_hook,  # noqa: E402
                     to_eap_graph, write_eap_json)
from .verify import EdgeVerification, verify_edges  # noqa: E402

__all__ += ["EdgeVerification", "eap_config", "eap_graph_of", "from_eap_graph", "mib_folder_name", "tl_edge_hooks",
            "tl_hook", "to_eap_graph", "verify_edges", "write_eap_json"]
