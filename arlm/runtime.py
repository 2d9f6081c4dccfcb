"""Device and precision selection, seeding: what every verb does before touching a model."""

from __future__ import annotations

import contextlib
import random

import torch

from arlm.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then CPU; an explicit device must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("device 'mps' requested but Apple MPS is not available here; use --device cpu or auto")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 autocast on GPUs that support it (Ampere and later), else float32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype '{name}'; use auto, float32, bfloat16 or float16")
    if name == "float16" and device.type != "cuda":
        raise UserError("float16 training needs a CUDA GPU (loss scaling); use --dtype bfloat16 or float32 on CPU")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed-precision context: matmuls in ``dtype``, weights and optimizer state stay float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
