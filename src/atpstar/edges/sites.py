"""Where writers write and readers read, per architecture family (data, plus a few accessors).

A reader's input is the input of its own norm: the attention's input norm for the q/k/v readers
(each head then sees the norm's output through its own slice of the query/key/value projection),
the MLP's input norm for the MLP reader and the final norm for ``logits``. A head's slice of a
projection is ``d_head`` consecutive output columns starting at :func:`column`: separate
``q_proj``/``k_proj``/``v_proj`` (Llama, Gemma 3, Mistral, Qwen), GPT-2's fused ``c_attn``
``[q | k | v]``, GPT-NeoX's fused ``query_key_value`` interleaved per head ``[q_h k_h v_h]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..substrate.arch import get_module


@dataclass(frozen=True)
class Sites:
    attn_norm: str
    """Norm inside a block whose output feeds the q/k/v projections."""
    mlp_norm: str
    """Norm inside a block whose output feeds the MLP."""
    final_norm: str
    """Final norm, from the CausalLM root (its input is the ``logits`` reader's input)."""
    proj: tuple
    """Module (inside a block) of the q, k and v projections: three paths, equal for fused projections."""
    layout: str
    """``"separate"``, ``"gpt2"`` (fused [q|k|v]) or ``"neox"`` (fused, per head [q k v])."""
    o_proj: str
    """Output projection inside a block (head outputs in, attention write out)."""
    attn_write: str
    """Module whose output is the attention's residual write (a tuple's first element)."""
    mlp_write: str
    """Module whose output is the MLP's residual write."""


_LLAMA = Sites("input_layernorm", "post_attention_layernorm", "model.norm",
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "separate", "self_attn.o_proj",
               "self_attn", "mlp")
SITES = {
    "llama": _LLAMA, "mistral": _LLAMA, "qwen2": _LLAMA, "qwen3": _LLAMA,
    "gemma3": Sites("input_layernorm", "pre_feedforward_layernorm", "model.norm", _LLAMA.proj, "separate",
                    "self_attn.o_proj", "post_attention_layernorm", "post_feedforward_layernorm"),
    "gpt2": Sites("ln_1", "ln_2", "transformer.ln_f", ("attn.c_attn",) * 3, "gpt2", "attn.c_proj", "attn", "mlp"),
    "gpt_neox": Sites("input_layernorm", "post_attention_layernorm", "gpt_neox.final_layer_norm",
                      ("attention.query_key_value",) * 3, "neox", "attention.dense", "attention", "mlp"),
}
_KIND = {"q": 0, "k": 1, "v": 2}


def sites_of(model) -> Sites:
    family = model.arch.family
    if family not in SITES:
        raise ValueError(f"edges are not mapped for the {family!r} architecture yet; add its row to "
                         f"atpstar/edges/sites.py (supported: {', '.join(sorted(SITES))})")
    return SITES[family]


def column(model, kind: str, unit: int) -> int:
    """First output column of reader head ``unit``'s slice in the projection module of ``kind``."""
    layout, d = sites_of(model).layout, model.d_head
    if layout == "separate":
        return unit * d
    if layout == "gpt2":
        return _KIND[kind] * model.n_heads * d + unit * d
    return unit * 3 * d + _KIND[kind] * d


def weight(module: nn.Module) -> Tensor:
    """(out, in) weight of an ``nn.Linear`` or of GPT-2's transposed ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.weight
    return module.weight.t()


def block_module(model, layer: int, path: str) -> nn.Module:
    return get_module(model.layers[layer], path)


def final_norm(model) -> nn.Module:
    return get_module(model.hf, sites_of(model).final_norm)


def first(out):
    """A module output's tensor (attention modules return a tuple)."""
    return out[0] if isinstance(out, tuple) else out
