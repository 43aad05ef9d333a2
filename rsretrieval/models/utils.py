"""Small helpers every method and notebook uses: device choice, freezing, parameter counts, seeds."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

_logger = logging.getLogger(__name__)


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Pick the device once. ``auto`` -> cuda if available, then mps, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for, but torch sees no CUDA GPU. Use device='auto' or 'cpu'.")
    return dev


def autocast(device: torch.device | str, enabled: bool = True) -> torch.autocast:
    """Mixed precision on CUDA only (bfloat16 where supported); a no-op context elsewhere."""
    dev = torch.device(device)
    use = enabled and dev.type == "cuda"
    dtype = torch.bfloat16 if use and torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type=dev.type, dtype=dtype, enabled=use)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    """Turn off gradients for every parameter of ``module``; returns it for chaining."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared parameters are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in module.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def print_trainable_parameters(module: torch.nn.Module) -> str:
    """Print and return peft's one-line summary: trainable params || all params || trainable%."""
    trainable, total = count_parameters(module)
    line = f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / max(total, 1):.4f}"
    print(line)
    return line


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
