"""Where atpstar's nodes, writers and readers live in a TransformerLens ``HookedTransformer``.

Node ``L3.q.H5@12`` → ``blocks.3.attn.hook_q`` [:, 12, 5]; writers ``hook_embed`` (plus
``hook_pos_embed`` on models with learned positions), ``blocks.{l}.attn.hook_result`` [head],
``blocks.{l}.hook_attn_out`` (a layer's whole attention write, e.g. Gemma 3's, after its norm),
``blocks.{l}.hook_mlp_out``; readers ``blocks.{l}.hook_q_input`` / ``hook_k_input`` /
``hook_v_input`` [head], ``blocks.{l}.hook_mlp_in``, and for ``logits``
``blocks.{n_layers-1}.hook_resid_post`` (as EAP-IG).

**Key and value heads under grouped-query attention.** atpstar's key and value units are per
key-value head (``L7.k.G1``). EAP-IG and MIB run TransformerLens with
``ungroup_grouped_query_attention=True``, where the key and value hooks (``hook_k_input``,
``attn.hook_k``, ...) have one slot per *query head*: key-value head ``g`` is the query heads
``g·s .. g·s+s−1`` (``s = n_heads // n_kv_heads``), each with its own copy of the input. Patching
atpstar's ``L7.k.G1`` is patching all of those copies at once, so its hook is the slice of them:
give ``group_size=s``. ``group_size=1`` indexes by key-value head, which is right for a model
without GQA and for TransformerLens with grouped hooks (the flag off).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from .graph import READER_NAME, WRITER_NAME

__all__ = ["TLHook", "tl_edge_hooks", "tl_hook"]

_NODE = re.compile(r"^L(?P<layer>\d+)\.(?P<kind>q|k|v|head|neuron)\.[HGN](?P<unit>\d+)$")
_NODE_HOOK = {"q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "head": "attn.hook_z",
              "neuron": "mlp.hook_post"}


class TLHook(NamedTuple):
    """Where a site lives in a TransformerLens ``HookedTransformer``: the hook's name, the head index
    (an int; a slice of query heads for a key-value head of ungrouped attention; None for hooks
    without a head axis) and the position (None when the name has none)."""

    hook: str
    head: int | slice | None = None
    pos: int | None = None

    @property
    def index(self) -> tuple:
        """Index into the hook's activation (batch, pos[, head, ...])."""
        pos = slice(None) if self.pos is None else self.pos
        return (slice(None), pos) if self.head is None else (slice(None), pos, self.head)


def tl_hook(name: str, n_layers: int | None = None, role: str | None = None, group_size: int | None = None) -> TLHook:
    """The TransformerLens hook of a node (``L3.q.H5@12``), writer (``L3.head.H5@12``, ``embed``) or
    reader (``L7.k.G1@12``, ``L3.mlp``, ``logits``) name; ``@t`` is optional.

    Some names are both: ``L3.head.H5`` is a node (``attn.hook_z``) and a writer (``attn.hook_result``),
    ``L3.k.G1`` a node (``attn.hook_k``) and a reader (``hook_k_input``), ``L3.mlp`` a writer
    (``hook_mlp_out``) and a reader (``hook_mlp_in``). ``role=None`` reads node names as nodes;
    ``role="writer"`` / ``"reader"`` reads the name as that end of an edge. ``logits`` needs
    ``n_layers``. For neurons the ``head`` field holds the neuron index. Key and value names
    (``.k.G``/``.v.G``) need ``group_size`` (see the module's docstring: ``n_heads // n_kv_heads`` for
    EAP-IG's and MIB's ungrouped attention, 1 without GQA)."""
    if role not in (None, "writer", "reader"):
        raise ValueError(f"role must be None, 'writer' or 'reader', not {role!r}")
    base, _, at = name.strip().partition("@")
    pos = int(at) if at else None
    m = _NODE.match(base)
    if m and role is None:
        unit = int(m["unit"])
        if m["kind"] in ("k", "v"):
            unit = _kv_heads(name, unit, group_size)
        return TLHook(f"blocks.{m['layer']}.{_NODE_HOOK[m['kind']]}", unit, pos)
    w = WRITER_NAME.match(base) if role != "reader" else None
    r = READER_NAME.match(base) if role != "writer" else None
    if w and r:
        raise ValueError(f"{name!r} is both a writer and a reader: give role='writer' or role='reader'")
    if w:
        if w["embed"]:
            return TLHook("hook_embed", None, pos)
        layer = w["layer"]
        if w["head"]:
            return TLHook(f"blocks.{layer}.attn.hook_result", int(w["unit"]), pos)
        return TLHook(f"blocks.{layer}.hook_attn_out" if w["attn"] else f"blocks.{layer}.hook_mlp_out", None, pos)
    if r:
        return _reader_hook(name, r, pos, n_layers, group_size)
    what = {None: "node, writer or reader", "writer": "writer", "reader": "reader"}[role]
    raise ValueError(f"not a {what} name: {name!r}")


def _reader_hook(name: str, r, pos, n_layers, group_size) -> TLHook:
    if r["logits"]:
        if n_layers is None:
            raise ValueError("the logits reader's hook is blocks.{n_layers-1}.hook_resid_post: give n_layers")
        return TLHook(f"blocks.{int(n_layers) - 1}.hook_resid_post", None, pos)
    layer = r["layer"]
    if r["mlp"]:
        return TLHook(f"blocks.{layer}.hook_mlp_in", None, pos)
    unit = int(r["unit"])
    if r["qkv"] != "q" and r["hg"] == "G":
        unit = _kv_heads(name, unit, group_size)
    return TLHook(f"blocks.{layer}.hook_{r['qkv']}_input", unit, pos)


def _kv_heads(name: str, group: int, group_size: int | None) -> int | slice:
    """The head slot(s) of key-value head ``group``: the query heads that share it."""
    if group_size is None:
        raise ValueError(f"{name}: a key/value head's hook depends on the attention's grouping: give group_size = "
                         "n_heads // n_kv_heads for TransformerLens with ungrouped attention (as EAP-IG and MIB run "
                         "it), or 1 for a model without grouped-query attention")
    if int(group_size) < 1:
        raise ValueError(f"group_size must be a positive int (query heads per key-value head), not {group_size!r}")
    size = int(group_size)
    return group if size == 1 else slice(group * size, (group + 1) * size)


def tl_edge_hooks(edge: str, n_layers: int | None = None, group_size: int | None = None) -> tuple[TLHook, TLHook]:
    """(writer hook, reader hook) of an edge name ``"L3.head.H5@12 -> L7.k.G1@12"`` (``group_size``:
    as :func:`tl_hook`, needed for key and value readers)."""
    if "->" not in edge:
        raise ValueError(f"not an edge name: {edge!r} (expected 'writer@t -> reader@t')")
    left, right = (s.strip() for s in edge.split("->"))
    return tl_hook(left, n_layers, role="writer"), tl_hook(right, n_layers, role="reader", group_size=group_size)
