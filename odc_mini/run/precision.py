"""The float precision of a run's passes: which one ``"auto"`` means on a device, and the autocast
and gradient scaler that carry it out (the methods take both as arguments).

* a GPU with bf16 tensor cores (compute capability 8.0 and newer): bf16 autocast;
* an older GPU (Colab's free T4 is 7.5: it would emulate bf16 slowly): fp16 autocast with a
  gradient scaler, so that small gradients do not underflow;
* a CPU that computes bf16 natively (AVX512_BF16 or AMX, as the processor reports): bf16
  autocast, about 1.6x the fp32 step of the quick profile on a 2-core Zen 4;
* any other CPU, and the pinned kernel path (``kernels.py``, fp32 by definition): fp32, since
  bf16 without those instructions is emulated and slower than fp32.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from . import kernels


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``"auto"`` stands for on ``device``; any other value is kept as asked."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        native = {"avx512_bf16", "amx_bf16"} & kernels.cpu_flags()     # bf16 instructions
        return "bf16" if native and not kernels.is_pinned() else "fp32"
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
