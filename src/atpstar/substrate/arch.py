"""Per-architecture site table: where the layers, attention and MLP modules live (data, not code).

Adding an architecture whose attention goes through transformers' ``AttentionInterface`` is one
entry here. Query/key/value/head sites need no entry: they are read inside our registered
attention function (see :mod:`atpstar.substrate.attention`), the same for every architecture.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Arch:
    """Where things live inside a ``*ForCausalLM`` of one ``model_type``."""

    family: str
    layers: str
    """Dotted path from the CausalLM to the ``nn.ModuleList`` of transformer blocks."""
    attn: str
    """Attention module inside a block (its output is the block's attention write)."""
    mlp: str
    """MLP module inside a block (its output is the block's MLP write)."""
    down: str
    """MLP down projection inside a block; its *input* holds the neurons."""
    parallel_residual: bool = False


_LLAMA = Arch("llama", "model.layers", "self_attn", "mlp", "mlp.down_proj")
ARCHS: dict[str, Arch] = {
    "llama": _LLAMA,
    "mistral": Arch("mistral", "model.layers", "self_attn", "mlp", "mlp.down_proj"),
    "qwen2": Arch("qwen2", "model.layers", "self_attn", "mlp", "mlp.down_proj"),
    "qwen3": Arch("qwen3", "model.layers", "self_attn", "mlp", "mlp.down_proj"),
    "gemma3_text": Arch("gemma3", "model.layers", "self_attn", "mlp", "mlp.down_proj"),
    "gpt2": Arch("gpt2", "transformer.h", "attn", "mlp", "mlp.c_proj"),
    "gpt_neox": Arch("gpt_neox", "gpt_neox.layers", "attention", "mlp", "mlp.dense_4h_to_h", parallel_residual=True),
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
            "line in atpstar/substrate/arch.py."
        )
    arch = ARCHS[model_type]
    if model_type == "gpt_neox" and not model.config.use_parallel_residual:
        arch = Arch(**{**arch.__dict__, "parallel_residual": False})
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
