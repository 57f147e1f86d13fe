"""Checking a --device before any work: one clear line for a device this machine cannot run, not a traceback."""

from __future__ import annotations

from .errors import VaecodecError


def check_device(name: str) -> None:
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise VaecodecError(f"unknown --device {name!r} (cpu, cuda, cuda:1 ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VaecodecError(f"--device {name} was asked for, but no CUDA device is available")
