"""Where a model lives: device and dtype names, and placing a model on one device or several.

Nothing in atpstar hard-codes a device: tensors follow the model (each layer's activations stay on
that layer's device, also when accelerate spreads the model over several devices), and only
results accumulated across batches are moved, deliberately, to the CPU.
"""

from __future__ import annotations

import torch
from torch import nn

HALF = (torch.float16, torch.bfloat16)


def resolve_device(device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``torch.device``."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:N', 'auto' or a torch.device") from err


def resolve_dtype(dtype) -> torch.dtype:
    """A ``torch.dtype`` or its name: ``"float32"``, ``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"``/``"half"``."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point type, got {dtype}")
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "float64": torch.float64,
             "double": torch.float64, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16, "half": torch.float16}
    key = str(dtype).removeprefix("torch.").lower()
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(names)} or a torch.dtype")
    return names[key]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype estimates are summed in: float32, or float64 for float64 models."""
    return torch.promote_types(dtype, torch.float32)


def is_dispatched(hf: nn.Module) -> bool:
    """True when accelerate placed the model (``from_pretrained(device_map=...)`` or ``dispatch_model``)."""
    return bool(getattr(hf, "hf_device_map", None))


def place(hf: nn.Module, dtype: torch.dtype, device: torch.device, device_map=None) -> None:
    """Cast ``hf`` to ``dtype`` and put it on ``device``, or spread it with accelerate per ``device_map``.

    A model already dispatched by accelerate stays where it is (only its dtype is changed)."""
    if not is_dispatched(hf) and device_map is not None:
        hf.to(dtype=dtype)
        _dispatch(hf, device_map, dtype)
    if is_dispatched(hf):
        if next(hf.parameters()).dtype != dtype:
            hf.to(dtype=dtype)
        return
    hf.to(device=device, dtype=dtype)


def _dispatch(hf: nn.Module, device_map, dtype: torch.dtype) -> None:
    from accelerate import dispatch_model, infer_auto_device_map

    if isinstance(device_map, str):
        if device_map != "auto":
            device_map = {"": str(resolve_device(device_map))}
        else:
            device_map = infer_auto_device_map(hf, no_split_module_classes=getattr(hf, "_no_split_modules", None),
                                               dtype=dtype)
    dispatch_model(hf, device_map=device_map)
