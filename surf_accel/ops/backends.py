"""The five backends and what each can serve, independent of any one op."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from surf_accel import _extension
from surf_accel.ops.checks import SUPPORTED_DTYPES
from surf_accel.ops.dispatch import Backend, register_backend


def _dtype_reason(dtype: torch.dtype) -> str | None:
    return None if dtype in SUPPORTED_DTYPES else f"dtype {dtype} is not supported"


def _torch(device: torch.device, dtype: torch.dtype) -> str | None:
    return _dtype_reason(dtype)


def _cpp(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cpu":
        return f"the C++ backend runs on CPU tensors, not {device.type}"
    st = _extension.status()
    return _dtype_reason(dtype) if st.loaded else f"extension {st.reason}"


def _cuda(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return f"the CUDA backend runs on CUDA tensors, not {device.type}"
    st = _extension.status()
    if not st.loaded:
        return f"extension {st.reason}"
    if not st.has_cuda_kernels:
        return f"extension {st.reason}"
    return _dtype_reason(dtype)


@functools.cache
def triton_reason() -> str | None:
    """Why Triton kernels cannot be launched at all in this process, or None."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton)"
    return None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton(device: torch.device, dtype: torch.dtype) -> str | None:
    reason = triton_reason()
    if reason is not None:
        return reason
    if device.type == "cpu" and not triton_interpreted():
        return "Triton runs on CPU tensors only under its interpreter: set TRITON_INTERPRET=1 before importing"
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels here target CUDA, not {device.type}"
    return _dtype_reason(dtype)


@functools.cache
def flex_reason() -> str | None:
    """Why torch's ``flex_attention`` is missing from this torch build, or None."""
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        return f"torch {torch.__version__} has no torch.nn.attention.flex_attention (needs torch >= 2.5)"
    return None


def _flex(device: torch.device, dtype: torch.dtype) -> str | None:
    if device.type not in ("cpu", "cuda"):
        return f"flex_attention runs on CPU and CUDA tensors, not {device.type}"
    return flex_reason() or _dtype_reason(dtype)


for _name, _cap in (("torch", _torch), ("cpp", _cpp), ("cuda", _cuda), ("triton", _triton), ("flex", _flex)):
    register_backend(Backend(_name, _cap))
