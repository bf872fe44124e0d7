"""Edges (SPEC.md §11): writers, readers, edge AtP*, exact edge patching, and export to other tools."""

from .export import eap_config, from_eap_graph, tl_edge_hooks, tl_hook, to_eap_graph, write_eap_json

__all__ = ["eap_config", "from_eap_graph", "tl_edge_hooks", "tl_hook", "to_eap_graph", "write_eap_json"]
