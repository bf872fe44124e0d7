"""AtP* query/key fix: exact effect of patching one query or one key on a (saturated) head.

Plain AtP linearises the attention softmax, which fails on saturated heads (a row whose
softmax is ~one-hot has ~zero gradient, yet moving its logits can flip the argmax). AtP*
instead recomputes the softmax exactly for query and key nodes and keeps only the gradient
``g_tj = dL/da_tj`` of the metric with respect to the clean attention probabilities.

Notation for one head, query position ``t`` and key position ``j``::

    r_tj = (q_t . k_j) * scale                      raw logit
    c_tj = softcap * tanh(r_tj / softcap)           (c = r when softcap is None)
    s_tj = c_tj + m_tj                              m: additive mask (0 visible, ~-inf masked)
    a_t  = softmax_j(s_t)

**Query fix** (replace ``q_t`` by ``q_t^noise``; only row ``t`` changes)::

    I(q_t) = sum_j (softmax_j(s'_t) - a_tj) g_tj,   s'_tj = c(q_t^noise . k_j) + m_tj

**Key fix** (replace only ``k_u``; column ``u`` of every row moves by
``delta_tu = c(q_t . k_u^noise) - c(q_t . k_u)``, the mask is unchanged). When a single
logit of a row moves, the other probabilities are rescaled by a common factor, which gives
an O(1) formula per ``(t, u)`` and O(T^2) per head instead of O(T^3)::

    x_tu   = s_tu - LSE_{j != u}(s_tj)                    so a_tu = sigmoid(x_tu)
    a'_tu  = sigmoid(x_tu + delta_tu)
    gbar   = sum_{j != u} a_tj g_tj / sum_{j != u} a_tj   (mean of g over the other keys)
    sum_j (a'_tj - a_tj) g_tj = (a'_tu - a_tu) (g_tu - gbar)
    I(k_u) = sum_t (a'_tu - a_tu) (g_tu - gbar_{t,-u})

Numerics. Every column except a row's argmax has ``a_tu <= 1/2``, so
``LSE_{j != u} = LSE_j + log1p(-a_tu)`` and ``gbar = (sum_j a g - a_tu g_tu) / (1 - a_tu)``
are free of cancellation there. For the argmax column (``a_tu`` may round to 1 in a
saturated row) both are recomputed directly from the other entries of the row (one masked
logsumexp / softmax per row, still O(T^2) per head). The difference of sigmoids is
evaluated as ``sigmoid(hi) * sigmoid(-lo) * (-expm1(-|delta|))``, which is exact-to-rounding
in relative terms, never overflows and is exactly 0 when ``delta == 0``.

Masking. ``mask=None`` means causal. An additive entry is *masked* if it is ``-inf`` or at
most half of ``finfo.min`` of the mask's dtype (capped at float32's, so a float32
``finfo.min`` mask upcast to float64 still counts); a boolean mask (True = visible) is also
accepted. Masked entries contribute exactly 0 (their ``g`` is never read), a row with no
other visible key contributes exactly 0 to its only visible key, and a row without any
visible key contributes 0. Other negative mask values (e.g. ALiBi-like biases) are treated
as ordinary additive logits, for which all formulas are exact.

Grouped-query attention follows the ``transformers`` ``repeat_kv`` convention: query head
``h`` reads kv head ``h // group``. A key node is shared by its group's query heads, each
with its own softmax and gradient, so its effect is the sum over those heads.

Shapes: ``q`` is ``(B, H, T, D)``, ``k`` is ``(B, KV, S, D)``, probabilities/gradients are
``(B, H, T, S)``. Computation happens in the input dtype, except that float16/bfloat16 are
computed (and returned) in float32.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["attention_scores", "query_fix", "key_fix"]


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Input dtype, but at least float32 (half precision is upcast, float32 is kept)."""
    return torch.promote_types(dtype, torch.float32)


def _raw_scores(q: Tensor, k: Tensor, scale: float, softcap: Optional[float]) -> Tensor:
    """Soft-capped logits ``c = cap(q . k * scale)`` of shape (B, H, T, S), without mask.

    Uses a (B, KV, group, T, D) view of ``q`` so keys are never copied per query head.
    """
    b, h, t, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    if h % kv != 0:
        raise ValueError(f"number of query heads {h} is not a multiple of kv heads {kv}")
    dtype = _compute_dtype(q.dtype)
    qg = q.to(dtype).reshape(b, kv, h // kv, t, d)
    r = torch.matmul(qg, k.to(dtype).unsqueeze(2).transpose(-1, -2)) * scale
    r = r.reshape(b, h, t, s)
    if softcap is not None:
        r = torch.tanh(r / softcap) * softcap
    return r


def _mask(mask: Optional[Tensor], t: int, s: int, dtype: torch.dtype, device):
    """Return ``(additive mask, visible)``, both broadcastable to (B, H, T, S).

    None means causal (requires t == s) filled with ``finfo(dtype).min``. A boolean mask
    (True = visible) is accepted too. An additive entry is masked iff it is at most half the
    most negative value of the mask's dtype (at most float32's), e.g. ``-inf`` or ``finfo.min``.
    """
    if mask is None:
        if t != s:
            raise ValueError(f"causal mask (mask=None) needs T == S, got T={t}, S={s}")
        mask = torch.ones(t, s, dtype=torch.bool, device=device).tril()
    if mask.dtype == torch.bool:
        visible = mask.to(device)
        zero = torch.zeros((), dtype=dtype, device=device)
        return torch.where(visible, zero, torch.finfo(dtype).min), visible
    floor = max(torch.finfo(mask.dtype).min, torch.finfo(torch.float32).min) / 2
    visible = (mask > floor).to(device)
    return mask.to(dtype=dtype, device=device), visible


def attention_scores(
    q: Tensor, k: Tensor, scale: float, mask: Optional[Tensor] = None,
    softcap: Optional[float] = None,
) -> Tensor:
    """Pre-softmax scores ``s = cap(q . k * scale) + mask`` of shape (B, H, T, S).

    ``mask`` is additive and broadcastable to (B, H, T, S); None means causal (T == S).
    """
    c = _raw_scores(q, k, scale, softcap)
    return c + _mask(mask, c.shape[-2], c.shape[-1], c.dtype, c.device)[0]


def _masked_softmax(s: Tensor, visible: Tensor) -> Tensor:
    """Softmax over the visible entries only; rows without visible entries are all 0."""
    a = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.where(visible, a, torch.zeros((), dtype=a.dtype, device=a.device))


def query_fix(
    q_clean: Tensor, q_noise: Tensor, k: Tensor, grad_probs: Tensor, scale: float,
    mask: Optional[Tensor] = None, softcap: Optional[float] = None,
    probs: Optional[Tensor] = None,
) -> Tensor:
    """Exact effect ``sum_j (a'_tj - a_tj) g_tj`` of patching each query; returns (B, H, T).

    ``probs`` are the clean attention probabilities (B, H, T, S) if already available.
    """
    c_noise = _raw_scores(q_noise, k, scale, softcap)
    m, visible = _mask(mask, *c_noise.shape[-2:], c_noise.dtype, c_noise.device)
    visible = visible.expand(c_noise.shape)
    if probs is None:
        probs = _masked_softmax(_raw_scores(q_clean, k, scale, softcap) + m, visible)
    probs_noise = _masked_softmax(c_noise + m, visible)
    diff = torch.where(visible, probs_noise - probs.to(c_noise.dtype), 0.0)
    return torch.where(visible, diff * grad_probs.to(c_noise.dtype), 0.0).sum(-1)


def _sigmoid_diff(x: Tensor, d: Tensor) -> Tensor:
    """``sigmoid(x + d) - sigmoid(x)`` without cancellation or overflow.

    Uses ``sigmoid(hi) - sigmoid(lo) = sigmoid(hi) * sigmoid(-lo) * (1 - exp(lo - hi))``.
    """
    y = x + d
    hi, lo = torch.maximum(x, y), torch.minimum(x, y)
    mag = torch.sigmoid(hi) * torch.sigmoid(-lo) * -torch.expm1(-d.abs())
    return torch.sign(d) * mag


def _leave_one_out(s: Tensor, a: Tensor, g: Tensor, visible: Tensor):
    """Per (t, u): ``x_tu = s_tu - LSE_{j!=u} s_tj`` and ``gbar_{t,-u}``, both (B, H, T, S).

    Non-argmax columns use the cancellation-free identities (a_tu <= 1/2); the argmax column
    of each row is recomputed from the other visible entries of that row.
    """
    neg_inf = float("-inf")
    s = s.masked_fill(~visible, neg_inf)
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    logp = s - lse
    p = logp.exp()
    x_rest = logp - torch.log1p(-p)
    weighted = (a * g).sum(-1, keepdim=True)
    gbar_rest = (weighted - a * g) / (1 - a)

    cols = torch.arange(s.shape[-1], device=s.device)
    top = cols == s.argmax(dim=-1, keepdim=True)  # one True per row
    s_others = s.masked_fill(top, neg_inf)
    lse_others = torch.logsumexp(s_others, dim=-1, keepdim=True)
    w_others = torch.softmax(s_others, dim=-1)  # NaN if no other visible key
    gbar_top = (w_others * g).sum(-1, keepdim=True)

    x = torch.where(top, s - lse_others, x_rest)
    gbar = torch.where(top, gbar_top, gbar_rest)
    return x, gbar


def key_fix(
    q: Tensor, k_clean: Tensor, k_noise: Tensor, grad_probs: Tensor, scale: float,
    mask: Optional[Tensor] = None, softcap: Optional[float] = None,
    probs: Optional[Tensor] = None,
) -> Tensor:
    """Exact effect of patching each single key; returns (B, KV, S).

    For key ``u`` of kv head ``i`` this is ``sum_{h in group i} sum_t sum_j (a'_tj - a_tj)
    g_tj`` with only column ``u`` of each row moved. O(B*H*T*S) time and memory.
    ``probs`` are the clean attention probabilities (B, H, T, S) if already available.
    """
    c = _raw_scores(q, k_clean, scale, softcap)
    delta = _raw_scores(q, k_noise, scale, softcap) - c
    m, visible = _mask(mask, *c.shape[-2:], c.dtype, c.device)
    s = c + m
    visible = visible.expand(s.shape)
    zero = torch.zeros((), dtype=s.dtype, device=s.device)
    if probs is None:
        a = _masked_softmax(s, visible)
    else:
        a = torch.where(visible, probs.to(s.dtype), zero)
    g = torch.where(visible, grad_probs.to(s.dtype), zero)  # masked g is never read

    x, gbar = _leave_one_out(s, a, g, visible)
    delta = torch.where(visible, delta, zero)
    has_other = visible.sum(-1, keepdim=True) >= 2
    contrib = _sigmoid_diff(torch.where(visible, x, zero), delta) * (g - gbar)
    contrib = torch.where(visible & has_other, contrib, zero)

    b, kv, n_keys = k_clean.shape[0], k_clean.shape[1], k_clean.shape[2]
    per_head = contrib.sum(-2)  # (B, H, S): sum over query positions t
    return per_head.reshape(b, kv, -1, n_keys).sum(2)
