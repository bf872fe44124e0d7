"""The QK fix as a linear map of the attention gradient: precompute once per layer, apply per stream.

Both fixes of :mod:`atpstar.methods.qkfix` are linear in ``g = ∂L/∂a`` once the clean and noise queries and
keys are fixed. AtP* needs them for every GradDrop stream that crosses a layer (about L/2 streams
per layer), so :class:`QKFix` computes everything that does not depend on ``g`` once and each
stream then costs a few elementwise passes over (B, H, T, S) instead of a full recomputation.

With ``D = a' − a`` for the query fix and, for the key fix (notation of :mod:`atpstar.methods.qkfix`),
``E_tu = sigmoid(x_tu + δ_tu) − sigmoid(x_tu)`` on visible entries of rows with another visible key::

    I(q_t) = Σ_j D_tj g_tj
    I(k_u) = Σ_t E_tu (g_tu − ḡ_{t,−u})
           = Σ_t [(E + F a) g − F S]_tu − Σ_{t: u = top_t} E_tu (w_t · g_t)

where ``S_t = Σ_j a_tj g_tj``, ``F = E / (1 − a)`` off each row's argmax column ``top_t`` (0 on it:
there ``1 − a`` may round to 0) and ``w_t`` is the softmax of row t without its argmax (the
cancellation-free leave-one-out weights). Exactly the formulas of :mod:`atpstar.methods.qkfix`, regrouped;
tested against them. Computation is in float32 at least (half-precision inputs are upcast).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .qkfix import _compute_dtype, _mask, _masked_softmax, _raw_scores, _sigmoid_diff


class QKFix:
    """Query and/or key fix of one attention layer as linear maps of ``g``.

    Args: as :func:`atpstar.methods.qkfix.query_fix` / :func:`~atpstar.methods.qkfix.key_fix`; ``q_noise`` (None: no
    query fix) and ``k_noise`` (None: no key fix). ``probs`` are the clean probabilities if at hand
    (ignored unless at least float32: rounded half-precision probabilities are recomputed)."""

    def __init__(self, q: Tensor, k: Tensor, scale: float, q_noise: Optional[Tensor] = None,
                 k_noise: Optional[Tensor] = None, mask: Optional[Tensor] = None, softcap: Optional[float] = None,
                 probs: Optional[Tensor] = None):
        c = _raw_scores(q, k, scale, softcap)
        m, visible = _mask(mask, *c.shape[-2:], c.dtype, c.device)
        visible = visible.expand(c.shape)
        self.dtype, self.kv = c.dtype, k.shape[1]
        zero = torch.zeros((), dtype=c.dtype, device=c.device)
        if probs is None or _compute_dtype(probs.dtype) != probs.dtype or probs.dtype != c.dtype:
            a = _masked_softmax(c + m, visible)
        else:
            a = torch.where(visible, probs, zero)
        self.d_query = None
        if q_noise is not None:
            noise = _masked_softmax(_raw_scores(q_noise, k, scale, softcap) + m, visible)
            self.d_query = torch.where(visible, noise - a, zero)
        self.a = None
        if k_noise is not None:
            self._key_terms(c + m, c, _raw_scores(q, k_noise, scale, softcap), a, visible, zero)

    def _key_terms(self, s: Tensor, c: Tensor, c_noise: Tensor, a: Tensor, visible: Tensor, zero: Tensor) -> None:
        neg_inf = float("-inf")
        s = s.masked_fill(~visible, neg_inf)
        logp = s - torch.logsumexp(s, dim=-1, keepdim=True)
        x_rest = logp - torch.log1p(-logp.exp())
        top_idx = s.argmax(dim=-1, keepdim=True)
        top = torch.arange(s.shape[-1], device=s.device) == top_idx
        s_others = s.masked_fill(top, neg_inf)
        x = torch.where(top, s - torch.logsumexp(s_others, dim=-1, keepdim=True), x_rest)
        has_other = visible.sum(-1, keepdim=True) >= 2
        delta = torch.where(visible, c_noise - c, zero)
        e = _sigmoid_diff(torch.where(visible, x, zero), delta)
        e = torch.where(visible & has_other, e, zero)
        f = torch.where(top, zero, e / (1 - a))
        self.a, self.f, self.p = a, f, e + f * a
        self.w = torch.where(has_other, torch.softmax(s_others, dim=-1), zero)  # NaN rows (no other key) -> 0
        self.e_top, self.top_idx = (e * top).sum(-1), top_idx.squeeze(-1)

    def query(self, grad_probs: Tensor) -> Tensor:
        """(B, H, T): effect of patching each query."""
        return (self.d_query * grad_probs.to(self.dtype)).sum(-1)

    def key(self, grad_probs: Tensor) -> Tensor:
        """(B, KV, S): effect of patching each single key (summed over the query heads that read it)."""
        g = grad_probs.to(self.dtype)
        total = (self.a * g).sum(-1, keepdim=True)  # S_t
        per_head = (self.p * g - self.f * total).sum(-2)  # (B, H, S)
        per_head.scatter_add_(-1, self.top_idx, -(self.e_top * (self.w * g).sum(-1)))
        b, h, s = per_head.shape
        return per_head.reshape(b, self.kv, h // self.kv, s).sum(2)


__all__ = ["QKFix"]
