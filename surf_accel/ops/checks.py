"""Input validation shared by every op: bad input raises ``ValueError`` naming the problem,
before any backend sees it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_tensor(name: str, t: torch.Tensor, ndim: int, layout: str) -> None:
    """A non-empty float tensor of rank ``ndim`` (``layout`` names its axes in the message)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(t.shape)}")
    if t.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} has dtype {t.dtype}; supported: float32, float16, bfloat16")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")


def check_latent(name: str, t: torch.Tensor) -> None:
    check_tensor(name, t, 5, "latent (B, C, T, H, W)")


def check_same(ref_name: str, ref: torch.Tensor, others: dict[str, torch.Tensor]) -> None:
    """Same dtype and device as ``ref`` for every tensor in ``others``."""
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {ref_name} has {ref.dtype}; cast them to one dtype")
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}; move them to one device")


def check_shape(name: str, t: torch.Tensor, expected: Sequence[int], why: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(expected)} ({why})")


def check_sigma(name: str, value: float) -> None:
    if isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a Python float, got a tensor; pass float({name})")
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a noise level in [0, 1], got {value!r}")


def check_finite_scalar(name: str, value: float) -> None:
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite Python number, got {value!r}")


def check_factor(factor: int) -> None:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a positive int, got {factor!r}")


def check_mode(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
