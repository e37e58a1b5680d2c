"""The float precision of a run's passes: which one ``"auto"`` means on a device, and the autocast
and gradient scaler that carry it out (the methods take both as arguments).

* a GPU with bf16 tensor cores (compute capability 8.0 and newer): bf16 autocast;
* an older GPU (Colab's free T4 is 7.5: it would emulate bf16 slowly): fp16 autocast with a
  gradient scaler, so that small gradients do not underflow;
* the CPU: fp32 (its bf16 is slow on processors without native bf16 instructions).
"""
from __future__ import annotations

import contextlib
import functools

import torch


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for on ``device``; any other value is kept as asked."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"


def autocast(device: torch.device, precision: str = "auto"):
    """The forward pass's autocast for ``precision`` on ``device`` (nothing for fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def passes(device: torch.device, precision: str) -> dict:
    """The ``autocast`` (a context factory) and ``scaler`` that a method's passes run with."""
    precision = resolve_precision(precision, device)
    return {"autocast": functools.partial(autocast, device, precision),
            "scaler": torch.amp.GradScaler(device.type) if precision == "fp16" else None}
