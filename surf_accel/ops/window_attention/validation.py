"""Argument checks of ``window_attention`` (docs/design.md 3.2), shared by every backend.

``q, k, v``: ``(B, S, heads, D)``, one device and dtype, ``S = T*H*W + num_text`` (video tokens
t-major, then text tokens). ``grid``, ``window``: three ints >= 1 (T, H, W); ``shift``: three ints
with ``0 <= shift < window``. ``text_mask``: ``(B, num_text)`` bool on q's device, or None.
``text_lengths``: ``B`` host ints in ``[0, num_text]`` (``text_mask.sum(1)``), or None.
Limits: head dim at most ``MAX_HEAD_DIM`` for the fused Triton kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from surf_accel.ops import checks

MAX_HEAD_DIM = 256


def _triple(name: str, value, minimum: int) -> tuple[int, int, int]:
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be a sequence of three ints (T, H, W), got {value!r}")
    out = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int) or x < minimum:
            raise ValueError(f"{name} must hold three ints >= {minimum}, got {tuple(value)!r}")
        out.append(int(x))
    return tuple(out)


def _validate(q, k, v, grid, window, shift, num_text, text_mask):
    for name, t in (("q", q), ("k", k), ("v", v)):
        checks.check_tensor(name, t, 4, "(B, S, heads, D)")
    checks.check_same("q", q, {"k": k, "v": v})
    for name, t in (("k", k), ("v", v)):
        checks.check_shape(name, t, q.shape, "it must match q")
    grid = _triple("grid", grid, 1)
    window = _triple("window", window, 1)
    shift = _triple("shift", shift, 0)
    for axis, w, s in zip("THW", window, shift):
        if s >= w:
            raise ValueError(f"shift along {axis} must satisfy 0 <= shift < window, got shift {s} with window {w}")
    if isinstance(num_text, bool) or not isinstance(num_text, int) or num_text < 0:
        raise ValueError(f"num_text must be an int >= 0, got {num_text!r}")
    b, s_len = q.shape[0], q.shape[1]
    n_video = grid[0] * grid[1] * grid[2]
    if s_len != n_video + num_text:
        raise ValueError(f"sequence length {s_len} != T*H*W + num_text = {grid[0]}*{grid[1]}*{grid[2]} + "
                         f"{num_text} = {n_video + num_text}")
    if text_mask is not None:
        if not isinstance(text_mask, torch.Tensor):
            raise ValueError(f"text_mask must be a bool tensor (B, num_text) or None, got {type(text_mask).__name__}")
        if num_text == 0:
            raise ValueError("text_mask was given but num_text is 0")
        if text_mask.dtype != torch.bool:
            raise ValueError(f"text_mask must have dtype torch.bool, got {text_mask.dtype}")
        if tuple(text_mask.shape) != (b, num_text):
            raise ValueError(f"text_mask has shape {tuple(text_mask.shape)}, expected (B, num_text) = {(b, num_text)}")
        if text_mask.device != q.device:
            raise ValueError(f"text_mask is on {text_mask.device} but q is on {q.device}")
    return grid, window, shift


def _check_text_lengths(text_lengths, b: int, num_text: int, text_mask) -> tuple[int, ...] | None:
    if text_lengths is None:
        return None
    if text_mask is None:
        raise ValueError("text_lengths was given without text_mask")
    if isinstance(text_lengths, torch.Tensor) or not isinstance(text_lengths, Sequence) or len(text_lengths) != b \
            or any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= num_text for x in text_lengths):
        raise ValueError(f"text_lengths must be {b} host ints in [0, num_text={num_text}] (text_mask.sum(1)), "
                         f"got {text_lengths!r}")
    return tuple(int(x) for x in text_lengths)
