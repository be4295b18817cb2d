"""What every Triton launcher shares: launches (and the autotuner's benchmark runs) happen on the
inputs' device, not on whichever CUDA device is current."""

from __future__ import annotations

import contextlib

import torch


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for a CUDA device (Triton launches on the current device and
    reads its stream), nothing for the CPU (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
