"""Ungrouped attention: every query head gets its own key and value input.

Under grouped-query attention (GQA) a key/value head serves several query heads, so an edge into a key
input ``L3.k.G1`` changes the keys of every query head of group 1 at once. TransformerLens's
``ungroup_grouped_query_attention`` — and with it EAP-IG's graphs and the MIB benchmark's circuit track —
instead gives each query head its own key and value projection (a copy of its group's), so that an edge
can reach the keys of one query head alone. :func:`ungroup_kv` does the same to a loaded model: the key
and value projections are replaced by ones with a copy of the group's weights per query head, and the
model then reports as many key/value heads as query heads. Its outputs are those of the original model
(the attention reads the same keys and values); every node and edge method then works at the finer
granularity: ``L3.k.G4`` is the key input of query head 4. The projections cost ``n_heads / n_kv_heads``
times more (a small share of the forward pass).
"""

from __future__ import annotations

import copy as copying

import torch
from torch import nn

from .arch import get_module
from .model import Model

__all__ = ["ungroup_kv"]


def ungroup_kv(model: Model, copy: bool = True) -> Model:
    """The model with one key and one value input per query head (module doc). ``copy``: leave ``model``
    as it is and change a copy (False: change ``model``'s transformers model in place, no extra memory).
    A model without grouped-query attention is returned as it is."""
    if not isinstance(model, Model):
        raise TypeError(f"ungroup_kv takes an atpstar Model (atpstar.load_model(...)), got {type(model).__name__}")
    if model.n_kv_heads == model.n_heads:
        return model
    if model.arch.qkv_layout != "separate":
        raise ValueError(f"{model.name}: grouped key/value heads in a fused {model.arch.qkv_layout!r} projection "
                         "cannot be ungrouped; only separate k_proj / v_proj projections can")
    hf = copying.deepcopy(model.hf) if copy else model.hf
    rep, d_head = model.n_heads // model.n_kv_heads, model.d_head
    for layer in get_module(hf, model.arch.layers):
        for path in dict.fromkeys(model.arch.qkv[1:]):
            parent_path, _, name = path.rpartition(".")
            parent = get_module(layer, parent_path) if parent_path else layer
            parent._modules[name] = _repeated(getattr(parent, name), model.n_kv_heads, d_head, rep)
            if hasattr(parent, "num_key_value_groups"):  # the attention module: each query head its own kv head
                parent.num_key_value_groups = 1
    for cfg in (hf.config, getattr(hf.config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "num_key_value_heads"):
            cfg.num_key_value_heads = model.n_heads
    return Model(hf, model.tokenizer, model.arch, f"{model.name} (ungrouped kv)")


def _repeated(linear: nn.Module, groups: int, d_head: int, rep: int) -> nn.Linear:
    """A Linear whose output is ``linear``'s with each group's ``d_head`` columns repeated ``rep`` times."""
    if not isinstance(linear, nn.Linear) or linear.out_features != groups * d_head:
        raise ValueError(f"expected a key/value nn.Linear with {groups * d_head} outputs, got {linear}")
    weight = linear.weight.detach().reshape(groups, d_head, -1).repeat_interleave(rep, 0).reshape(-1, linear.in_features)
    new = nn.Linear(linear.in_features, weight.shape[0], bias=linear.bias is not None, device=weight.device,
                    dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach().reshape(groups, d_head).repeat_interleave(rep, 0).flatten())
    return new.requires_grad_(False)
