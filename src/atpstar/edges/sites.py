"""Where writers write and readers read: accessors over the architecture table
(:data:`atpstar.substrate.arch.ARCHS`, one row per architecture for nodes and edges alike).

A reader's input is the input of its own norm: the attention's input norm for the q/k/v readers
(each head then sees the norm's output through its own slice of the query/key/value projection),
the MLP's input norm for the MLP reader and the final norm for ``logits``. A head's slice of a
projection is ``d_head`` consecutive output columns starting at :func:`column`, by the row's
``qkv_layout``: separate ``q_proj``/``k_proj``/``v_proj`` (Llama, Gemma 3, Mistral, Qwen), GPT-2's
fused ``c_attn`` ``[q | k | v]``, GPT-NeoX's fused ``query_key_value`` interleaved per head ``[q_h k_h v_h]``.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..substrate.arch import get_module

_KIND = {"q": 0, "k": 1, "v": 2}


def column(model, kind: str, unit: int) -> int:
    """First output column of reader head ``unit``'s slice in the projection module of ``kind``."""
    layout, d = model.arch.qkv_layout, model.d_head
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
    return get_module(model.hf, model.arch.final_norm)


def first(out):
    """A module output's tensor (attention modules return a tuple)."""
    return out[0] if isinstance(out, tuple) else out
