"""Edges (SPEC.md §11): AtP* on the computational graph, verified by exact edge patching.

Public API::

    graph = EdgeGraph.of(model, per_head=None)        # writers, readers, valid (W, R), name lookups
    edges = EdgeSet.from_names(graph, ["L3.head.H5@12 -> L7.k.G1@12"])   # or EdgeSet.every / .parse
    scores = atp(model, pairs, qk_fix=True, graddrop=True, metric=None, graph=None, per_pair=False)
    exact = edge_acp(model, pairs, edges=None, metric=None, graph=None, batch_size=None, per_pair=False)
    patcher = EdgePatcher(model, pairs, metric=None, graph=None, batch_size=None)
    patcher.single(edges) -> (N, pairs);  patcher.effects(edges, sets) -> (sets, pairs)   # joint patches
    scores.top(k), scores.to_frame(top=None), scores.edges(k), scores.group("positions", "heads")
    ranked = subsampling(model, pairs, edges=None, p=0.01, samples=1000)   # also blocks(size=16), hierarchical()
    checked = atpstar.verify(model, pairs, scores, budget=atpstar.Budget(nodes=30))   # exact, ranked order
    to_eap_graph(table, cfg) / eap_graph_of(scores, d_model, circuit) / tl_hook(name) / tl_edge_hooks(edge)

Modules, one idea each:

- :mod:`.graph`: the vocabulary — writers (``embed``, ``L{ℓ}.head.H{h}`` or ``L{ℓ}.attn``, ``L{ℓ}.mlp``),
  readers (``L{ℓ}.q.H{h}``, ``L{ℓ}.k.G{g}``, ``L{ℓ}.v.G{g}``, ``L{ℓ}.mlp``, ``logits``), which edges exist;
- :mod:`.edgeset`: sets of edges as tensors ``(writer, reader, pos)``, their names and ids;
- :mod:`.scores`: :class:`EdgeScores`, (W, R, T) tensors with rankings, tables and groupings;
- :mod:`.sites`, :mod:`.writes`: where writers write and readers read, per architecture; every write;
- :mod:`.reader_patch`, :mod:`.patching`: exact edge patching (the ground truth): :func:`edge_acp`
  (single edges), :class:`EdgePatcher` / :func:`edge_patch` (joint patches of edge sets);
- :mod:`.reader_grads`, :mod:`.atp`: :func:`atp` (also ``edge_atp``) — edge AtP, +QK fix, +GradDrop, AtP*;
- :mod:`.baselines`: the paper's baselines on edges — :func:`subsampling`, :func:`blocks`,
  :func:`hierarchical`, :func:`iterative` (the node estimators' cores of :mod:`atpstar.methods`, with an EdgePatcher);
- :mod:`.units`: edges as the units of a ranking (:mod:`atpstar.units`), so :func:`atpstar.verify` verifies
  the top of an edge ranking by exact edge patching;
- :mod:`.export`: the EAP-IG / MIB graph JSON of an edge table, TransformerLens hook names.
"""

from .atp import atp
from .edgeset import EdgeSet
from .graph import READER_KINDS, WRITER_KINDS, EdgeGraph, heads_additive
from .patching import EdgePatcher, edge_acp, edge_patch
from .scores import EdgeScores, edge_frame

edge_atp = atp

__all__ = ["READER_KINDS", "WRITER_KINDS", "EdgeGraph", "EdgePatcher", "EdgeScores", "EdgeSet", "atp", "edge_acp",
           "edge_atp", "edge_frame", "edge_patch", "heads_additive"]

from .export import (eap_config, eap_graph_of, from_eap_graph, mib_folder_name, tl_edge_hooks, tl_hook,  # noqa: E402
                     to_eap_graph, write_eap_json)
from . import units  # noqa: E402,F401  (registers edges as a unit kind: atpstar.verify takes EdgeScores)
from .baselines import EDGE_BASELINES, blocks, hierarchical, iterative, subsampling  # noqa: E402

edge_subsampling, edge_blocks, edge_hierarchical, edge_iterative = subsampling, blocks, hierarchical, iterative

__all__ += ["eap_config", "eap_graph_of", "from_eap_graph", "mib_folder_name", "tl_edge_hooks",
            "tl_hook", "to_eap_graph", "write_eap_json", "EDGE_BASELINES", "blocks", "edge_blocks",
            "edge_hierarchical", "edge_iterative", "edge_subsampling", "hierarchical", "iterative", "subsampling"]
