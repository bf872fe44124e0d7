"""The architecture table: where every module the node and edge methods hook lives, per ``model_type``
(data, not code).

One row per supported ``config.model_type`` names, as dotted paths, the transformer blocks, the
modules whose outputs are the node methods' writes (attention, MLP, the MLP's down projection whose
input holds the neurons) and the modules the edge methods read and write through (each reader's
norm, the query/key/value projections and their layout, the output projection, the attention's and
the MLP's residual writes). Query/key/value/head *activations* need no entry: they are read inside
our registered attention function (:mod:`atpstar.substrate.attention`), the same for every
architecture. A new architecture whose attention goes through transformers' ``AttentionInterface``
is one row here; the tiny-model tests of ``tests/conftest.py`` then check it for nodes and edges.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import nn

QKV_LAYOUTS = ("separate", "gpt2", "neox")
"""How a head's query/key/value slice sits in the projections (see :attr:`Arch.qkv_layout`)."""


@dataclass(frozen=True)
class Arch:
    """Where things live inside a ``*ForCausalLM`` of one ``model_type``: paths inside a block unless
    said otherwise."""

    family: str
    """Short name shown to users (``llama``, ``gemma3``, ...)."""
    layers: str
    """Dotted path from the CausalLM to the ``nn.ModuleList`` of transformer blocks."""
    final_norm: str
    """Final norm, from the CausalLM (its input is the edge reader ``logits``)."""
    attn: str
    """Attention module (its output is the node methods' attention write, ``attn`` nodes)."""
    mlp: str
    """MLP module (its output is the node methods' MLP write, ``mlp`` nodes)."""
    down: str
    """MLP down projection; its *input* holds the neurons."""
    attn_norm: str
    """Norm whose output feeds the query/key/value projections (its input: the q/k/v edge readers)."""
    mlp_norm: str
    """Norm whose output feeds the MLP (its input: the MLP edge reader)."""
    qkv: tuple
    """Modules of the query, key and value projections: three paths, equal for a fused projection."""
    qkv_layout: str
    """One of :data:`QKV_LAYOUTS`: ``"separate"`` q/k/v projections (head h: ``d_head`` columns from
    ``h * d_head``), ``"gpt2"`` one fused ``[q | k | v]``, ``"neox"`` one fused, per head ``[q_h k_h v_h]``."""
    o_proj: str
    """Output projection (head outputs in, attention write out)."""
    attn_write: str
    """Module whose output is the attention's residual write (the edge writers). When it is :attr:`attn`
    the write is a sum over heads (per-head edge writers); a norm after the attention mixes the heads."""
    mlp_write: str
    """Module whose output is the MLP's residual write (the edge writer ``L{ℓ}.mlp``)."""
    parallel_residual: bool = False
    """Attention and MLP read the same block input (GPT-NeoX/Pythia) instead of one after the other."""

    def __post_init__(self):
        if self.qkv_layout not in QKV_LAYOUTS or len(self.qkv) != 3:
            raise ValueError(f"{self.family}: qkv_layout must be one of {QKV_LAYOUTS} and qkv three module paths, "
                             f"got {self.qkv_layout!r} and {self.qkv!r}")

    @property
    def heads_additive(self) -> bool:
        """True when the attention's residual write is a sum of per-head writes (no norm after the attention)."""
        return self.attn_write == self.attn


def _llama_like(family: str, **changes) -> Arch:
    """The Llama layout, which Mistral, Qwen and Gemma 3 share up to a few names."""
    llama = Arch(family, layers="model.layers", final_norm="model.norm", attn="self_attn", mlp="mlp",
                 down="mlp.down_proj", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm",
                 qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), qkv_layout="separate",
                 o_proj="self_attn.o_proj", attn_write="self_attn", mlp_write="mlp")
    return replace(llama, **changes)


ARCHS: dict[str, Arch] = {
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    # Gemma 3 normalises each sub-layer's output before the residual add (the writes mix the heads)
    "gemma3_text": _llama_like("gemma3", mlp_norm="pre_feedforward_layernorm", attn_write="post_attention_layernorm",
                               mlp_write="post_feedforward_layernorm"),
    "gpt2": Arch("gpt2", layers="transformer.h", final_norm="transformer.ln_f", attn="attn", mlp="mlp",
                 down="mlp.c_proj", attn_norm="ln_1", mlp_norm="ln_2", qkv=("attn.c_attn",) * 3, qkv_layout="gpt2",
                 o_proj="attn.c_proj", attn_write="attn", mlp_write="mlp"),
    "gpt_neox": Arch("gpt_neox", layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", attn="attention",
                     mlp="mlp", down="mlp.dense_4h_to_h", attn_norm="input_layernorm",
                     mlp_norm="post_attention_layernorm", qkv=("attention.query_key_value",) * 3, qkv_layout="neox",
                     o_proj="attention.dense", attn_write="attention", mlp_write="mlp", parallel_residual=True),
}
"""Supported ``config.model_type`` values. Tested: llama (SmolLM2), gpt2, gpt_neox (Pythia), gemma3_text."""


def supported() -> str:
    return ", ".join(sorted(ARCHS))


def arch_for(model: nn.Module) -> Arch:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHS:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({type(model).__name__}); "
            f"atpstar supports model_type in: {supported()}. "
            "Other decoder-only models whose attention uses transformers' AttentionInterface need one "
            "row in atpstar/substrate/arch.py."
        )
    arch = ARCHS[model_type]
    if model_type == "gpt_neox" and not model.config.use_parallel_residual:
        arch = replace(arch, parallel_residual=False)
    return arch


def get_module(root: nn.Module, dotted: str) -> nn.Module:
    mod = root
    for part in dotted.split("."):
        if not hasattr(mod, part):
            raise AttributeError(f"{type(root).__name__} has no submodule {dotted!r} (missing {part!r})")
        mod = getattr(mod, part)
    return mod


def in_features(linear: nn.Module) -> int:
    """Input width of a down projection: ``nn.Linear`` or GPT-2's transposed ``Conv1D``."""
    if isinstance(linear, nn.Linear):
        return linear.in_features
    return linear.weight.shape[0]  # transformers.pytorch_utils.Conv1D stores (in, out)
