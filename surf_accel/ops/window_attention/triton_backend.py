"""``triton`` backend of ``window_attention``: one fused flash-style kernel
(``surf_accel.triton_kernels.window_attention``) that finds window membership by index arithmetic
on the t-major token order; handles text tokens.

``q, k, v``: ``(B, S, heads, D)`` with ``S = T*H*W + num_text``, head dim ``D <= MAX_HEAD_DIM``
(and ``>= 16`` on CUDA); ``text_mask``: ``(B, num_text)`` bool or None. Returns ``(B, S, heads, D)``
contiguous in the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch

from surf_accel.ops.window_attention.validation import MAX_HEAD_DIM


# wrapped as a custom op so torch.compile sees an opaque node
@torch.library.custom_op("surf_accel_triton::window_attention", mutates_args=())
def _triton_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                             window: list[int], shift: list[int], num_text: int,
                             text_mask: Optional[torch.Tensor]) -> torch.Tensor:
    from surf_accel.triton_kernels import window_attention as kernels  # triton is optional: imported on first call
    return kernels.window_attention(q, k, v, grid, window, shift, num_text, text_mask)


@_triton_window_attention.register_fake
def _(q, k, v, grid, window, shift, num_text, text_mask):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _triton_impl(q, k, v, grid, window, shift, num_text, text_mask, text_lengths):
    return _triton_window_attention(q, k, v, list(grid), list(window), list(shift), num_text, text_mask)


def _triton_limits(*args) -> str | None:
    if not args:
        return None
    d = args[0].shape[-1]
    if d > MAX_HEAD_DIM:
        return f"head dim {d} > {MAX_HEAD_DIM}"
    if args[0].is_cuda and d < 16:
        return f"head dim {d} < 16 (tl.dot needs tiles of at least 16)"
    return None
