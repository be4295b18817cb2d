"""Shifted-window attention (docs/design.md 3.2): the public entry point ``window_attention``, the
``WINDOW_ATTENTION`` op that dispatches to one implementation per backend, and its automatic choice.

``q, k, v``: ``(B, S, heads, D)`` with ``S = T*H*W + num_text`` (video tokens t-major, then text
tokens); the output has the same layout and dtype. Modules:

* ``validation``: argument checks (``_validate``, ``_triple``, ``_check_text_lengths``) and limits.
* ``torch_backend`` (``torch``): windows gathered into a padded batch + one SDPA
  (``window_reference``); any device.
* ``triton_backend`` (``triton``): one fused flash-style kernel
  (``surf_accel.triton_kernels.window_attention``) that finds window membership by index arithmetic
  on the t-major token order; handles text tokens.
* ``partition`` (``cuda`` / ``cpp``): the compiled ``surf_accel::window_pack`` / ``window_unpack``
  kernels pack the video tokens window-contiguously for flash-attn varlen (else xformers, else
  SDPA); temporal-only windows run in place. ``xformers`` is not a backend name of the dispatch
  layer, only the partition path's second varlen library.
* ``flex`` (``flex``): ``torch.nn.attention.flex_attention`` with a block mask built from the window
  ids (compiled on CUDA, eager on CPU): torch-native, a second oracle, never chosen automatically.

Automatic choice (``_preference``): on CUDA the partition path only when a varlen library serves
the dtype (flash-attn, else xformers; fp16/bf16; each imported and probed with a tiny call on the
device once), else the fused Triton kernel, whose only alternative would be padded SDPA over
gathered windows; fp32 goes to SDPA's memory-efficient kernel through the partition path (the
``torch`` backend without the extension); logged once with the reason.

The names below re-export the backends' public helpers; a test that monkeypatches one patches the
module that uses it (``partition.varlen_reason``, ``partition._pack``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from surf_accel.ops import backends as _backends
from surf_accel.ops.dispatch import Op
from surf_accel.ops.window_attention import flex, partition, torch_backend, triton_backend
from surf_accel.ops.window_attention.flex import FLEX_BLOCK, compiled_flex, flex_block_tables, flex_window_attention
from surf_accel.ops.window_attention.partition import (VARLEN_LIBRARIES, import_reason, temporal_only,
                                                       varlen_library, varlen_reason, window_seqlens)
from surf_accel.ops.window_attention.validation import MAX_HEAD_DIM, _check_text_lengths, _validate

# The torch, partition and flex backends are opaque custom ops with q's layout as output: one fake serves all.
for _op in (torch_backend._torch_window_attention, partition._partition_window_attention, flex._flex_window_attention):
    _op.register_fake(lambda q, k, v, grid, window, shift, num_text, text_mask, text_lengths:
                      torch.empty_like(q, memory_format=torch.contiguous_format))


def _opaque(op):
    def call(q, k, v, grid, window, shift, num_text, text_mask, text_lengths):
        return op(q, k, v, list(grid), list(window), list(shift), num_text, text_mask,
                  None if text_lengths is None else list(text_lengths))
    return call


def _preference(device: torch.device, dtype: torch.dtype) -> tuple[tuple[str, ...], str]:
    """Backends in order for ``device``/``dtype`` and why: the partition path pays on CUDA only with
    a varlen library (else it pads gathered windows for SDPA, several times the fused kernel's
    traffic); the fused Triton kernel needs no pack copies and skips blocks outside the windows, but
    its fp32 tiles spill registers (benchmarks/results/triton_aot.md), so fp32 goes to SDPA."""
    if device.type == "cuda":
        if dtype == torch.float32:
            return ("cuda", "torch"), ("fp32: SDPA's memory-efficient kernel on the partitioned windows (temporal ones "
                                       "in place); the fused Triton kernel's fp32 tiles spill registers")
        lib = partition.varlen_library(device, dtype)
        if lib is not None:
            return ("cuda", "triton", "torch"), f"{lib} varlen attention serves the windows (temporal ones in place)"
        missing = "; ".join(partition.varlen_reason(name, device, dtype) for name in partition.VARLEN_LIBRARIES)
        return ("triton", "cuda", "torch"), (f"fused Triton kernel; no varlen attention library for {dtype} "
                                             f"({missing}), so the partition path would fall back to padded SDPA")
    return ("cpp", "torch"), "C++ pack/unpack + SDPA (temporal windows: SDPA on the in-place frame slabs)"


WINDOW_ATTENTION = Op(
    "window_attention",
    impls={"torch": _opaque(torch_backend._torch_window_attention),
           "cpp": _opaque(partition._partition_window_attention),
           "cuda": _opaque(partition._partition_window_attention),
           "triton": triton_backend._triton_impl,
           "flex": _opaque(flex._flex_window_attention)},
    requires={"cpp": partition._partition_kernels("CPU"), "cuda": partition._partition_kernels("CUDA")},
    limits={"cpp": partition._partition_limits("CPU"), "cuda": partition._partition_limits("CUDA"),
            "triton": triton_backend._triton_limits, "flex": flex.flex_limits},
    preference=_preference,
)
assert _backends  # the import registers the backends


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    grid: Sequence[int],
    window: Sequence[int],
    shift: Sequence[int] = (0, 0, 0),
    *,
    num_text: int = 0,
    text_mask: torch.Tensor | None = None,
    text_lengths: Sequence[int] | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Shifted-window attention over a ``(T, H, W)`` token grid (docs/design.md 3.2).

    ``q, k, v``: ``(B, S, heads, D)`` with ``S = T*H*W + num_text`` (video tokens t-major, then
    text tokens). Along each axis a token's window index is ``(i + shift) // window`` (edge windows
    are partial; a window >= the axis covers it); ``0 <= shift < window``. Video queries attend to
    their window plus all valid text keys; text queries attend to every valid key; ``text_mask``
    ``(B, num_text)`` bool marks valid text tokens (None: all valid). ``text_lengths``: the number
    of valid text tokens per batch item as host ints (``text_mask.sum(1)``, the caller's promise, not
    checked): the partition backends need them on the host and would otherwise sync with the device
    once per call; compute them once per stage. Softmax scale ``D ** -0.5``.
    Returns ``(B, S, heads, D)`` in the input dtype.
    """
    grid, window, shift = _validate(q, k, v, grid, window, shift, num_text, text_mask)
    text_lengths = _check_text_lengths(text_lengths, q.shape[0], num_text, text_mask)
    return WINDOW_ATTENTION(q, k, v, grid, window, shift, num_text, text_mask, text_lengths,
                            device=q.device, dtype=q.dtype, backend=backend)


__all__ = ["FLEX_BLOCK", "MAX_HEAD_DIM", "VARLEN_LIBRARIES", "WINDOW_ATTENTION", "compiled_flex", "flex_block_tables",
           "flex_window_attention", "import_reason", "temporal_only", "varlen_library", "varlen_reason",
           "window_attention", "window_seqlens"]
