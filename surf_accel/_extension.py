"""Lazy loader of the compiled extension ``surf_accel._C``.

Importing surf_accel never fails because the extension is missing: ``load()`` returns whether the
ops are registered and ``status()`` says why not (not built, built for another torch, ...).
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    path: str | None
    has_cuda_kernels: bool
    reason: str | None  # why it is not loaded, or why CUDA kernels are absent

    def describe(self) -> str:
        if not self.loaded:
            return f"not loaded: {self.reason}"
        cuda = "with CUDA kernels" if self.has_cuda_kernels else f"CPU only ({self.reason})"
        return f"loaded from {self.path}, {cuda}"


@functools.cache
def status() -> ExtensionStatus:
    spec = importlib.util.find_spec("surf_accel._C")
    if spec is None or spec.origin is None:
        return ExtensionStatus(
            False, None, False,
            "surf_accel._C was not built; reinstall with `pip install --no-build-isolation .` "
            "(a C++ compiler is needed)",
        )
    try:
        torch.ops.load_library(spec.origin)
    except OSError as exc:  # e.g. built against another torch: undefined symbols
        return ExtensionStatus(
            False, spec.origin, False,
            f"{spec.origin} failed to load ({exc}); rebuild it against torch {torch.__version__}",
        )
    has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key("surf_accel::guided_step", "CUDA")
    reason = None if has_cuda else "built without CUDA: the installed torch has no CUDA support"
    return ExtensionStatus(True, spec.origin, has_cuda, reason)


def load() -> bool:
    """Load the extension once; True when its ops are registered with torch."""
    return status().loaded
