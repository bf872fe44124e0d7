"""Our attention function, registered in transformers' ``AttentionInterface`` as ``"atpstar"``.

Every supported architecture calls the registered function with per-head queries and keys as the
attention sees them (after rotary embedding and QK-norm), keys/values before GQA expansion, the
additive mask and the scaling. That single function is where ``q``, ``k``, ``v``, the attention
probabilities and the per-head outputs (``head``) are read and overwritten, for all
architectures at once. The math is the models' own eager attention; with no active
:class:`~atpstar.substrate.capture.Intervention` it is a plain eager attention (tested: logits equal the
model's eager implementation).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

from ..types import PROBS, NodeKind

IMPL = "atpstar"

_ACTIVE: list = []
"""Stack of active interventions; the innermost one sees every site."""


def active():
    return _ACTIVE[-1] if _ACTIVE else None


def expand_kv(x: Tensor, n_heads: int) -> Tensor:
    """(B, KV, T, D) -> (B, H, T, D): kv head i serves query heads i*g .. i*g+g-1 (transformers' repeat_kv)."""
    groups = n_heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, softcap=None, **kwargs):
    hook = active()
    layer = module.layer_idx
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if hook is not None:
        query = hook(layer, NodeKind.Q, query)
        key = hook(layer, NodeKind.K, key)
        value = hook(layer, NodeKind.V, value)
        hook.attention_meta(layer, attention_mask, scaling, softcap)
    n_heads = query.shape[1]
    scores = torch.matmul(query, expand_kv(key, n_heads).transpose(2, 3)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    if hook is not None:
        probs = hook(layer, PROBS, probs)
    heads = torch.matmul(probs, expand_kv(value, n_heads))
    if hook is not None:
        heads = hook(layer, NodeKind.HEAD, heads)
    return heads.transpose(1, 2).contiguous(), probs


def register() -> None:
    """Register the attention function and its (eager, additive) mask under the name ``"atpstar"``."""
    AttentionInterface.register(IMPL, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPL, eager_mask)


register()
