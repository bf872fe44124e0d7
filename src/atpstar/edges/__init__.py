"""Edges: AtP* on the computational graph, verified by exact edge patching.

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
    to_eap_graph(table, cfg) / eap_graph_of(scores, d_model, circuit, verified) / write_mib_folder(...)
    tl_hook(name, group_size=...) / tl_edge_hooks(edge, group_size=...)
    eap(model, pairs) / eap_ig_inputs(model, pairs, ig_steps=5) / eap_ig_activations(model, pairs, ig_steps=5)

Modules, one idea each:

- :mod:`.graph`: the vocabulary — writers (``embed``, ``L{ℓ}.head.H{h}`` or ``L{ℓ}.attn``, ``L{ℓ}.mlp``),
  readers (``L{ℓ}.q.H{h}``, ``L{ℓ}.k.G{g}``, ``L{ℓ}.v.G{g}``, ``L{ℓ}.mlp``, ``logits``), which edges exist;
- :mod:`.edgeset`: sets of edges as tensors ``(writer, reader, pos)``, their names and ids;
- :mod:`.scores`: :class:`EdgeScores`, (W, R, T) tensors with rankings, tables and groupings;
- :mod:`.sites`, :mod:`.writes`: where writers write and readers read, per architecture; every write;
- :mod:`.reader_patch`, :mod:`.patching`: exact edge patching (the ground truth): :func:`edge_acp`
  (single edges), :class:`EdgePatcher` / :func:`edge_patch` (joint patches of edge sets);
- :mod:`.reader_grads`, :mod:`.atp`: :func:`atp` — edge AtP, +QK fix, +GradDrop, AtP*;
- :mod:`.baselines`: the paper's baselines on edges — :func:`subsampling`, :func:`blocks`,
  :func:`hierarchical`, :func:`iterative` (the node estimators' cores of :mod:`atpstar.methods`, with an EdgePatcher);
- :mod:`.units`: edges as the units of a ranking (:mod:`atpstar.units`), so :func:`atpstar.verify` verifies
  the top of an edge ranking by exact edge patching;
- :mod:`.export`, :mod:`.mib`: the EAP-IG / MIB graph JSON of an edge table, MIB's submission folder;
- :mod:`.tl_hooks`: TransformerLens hook names of nodes, writers and readers.
- :mod:`.eap_ig`: the field's edge methods :func:`eap`, :func:`eap_ig_inputs`, :func:`eap_ig_activations` (EAP-IG).
"""

from .atp import atp
from .edgeset import EdgeSet
from .graph import READER_KINDS, WRITER_KINDS, EdgeGraph, heads_additive
from .patching import EdgePatcher, edge_acp, edge_patch
from .scores import EdgeScores, edge_frame

__all__ = ["READER_KINDS", "WRITER_KINDS", "EdgeGraph", "EdgePatcher", "EdgeScores", "EdgeSet", "atp", "edge_acp",
           "edge_frame", "edge_patch", "heads_additive"]

from .export import eap_config, eap_graph_of, from_eap_graph, to_eap_graph, write_eap_json  # noqa: E402
from .mib import mib_folder_name, write_mib_folder  # noqa: E402
from .tl_hooks import tl_edge_hooks, tl_hook  # noqa: E402
from . import units  # noqa: E402,F401  (registers edges as a unit kind: atpstar.verify takes EdgeScores)
from .baselines import EDGE_BASELINES, blocks, hierarchical, iterative, subsampling  # noqa: E402
from .eap_ig import eap, eap_ig_activations, eap_ig_inputs  # noqa: E402

__all__ += ["eap_config", "eap_graph_of", "from_eap_graph", "mib_folder_name", "tl_edge_hooks", "tl_hook",
            "to_eap_graph", "write_eap_json", "write_mib_folder", "EDGE_BASELINES", "blocks", "hierarchical",
            "iterative", "subsampling", "eap", "eap_ig_activations", "eap_ig_inputs"]
