"""Shifted-window attention (SPEC 3.2): public entry point, validation and one implementation per
backend.

Backends:

* ``torch``: windows gathered into a padded batch + one SDPA (``window_reference``); any device.
* ``triton``: one fused flash-style kernel (``surf_accel.triton_kernels.window_attention``) that finds
  window membership by index arithmetic on the t-major token order; handles text tokens.
* ``cuda`` / ``cpp``: the compiled ``surf_accel::window_pack`` / ``window_unpack`` kernels (CUDA on GPU,
  their C++ twin on CPU) pack the video tokens window-contiguously; the packed windows go to
  ``flash_attn.flash_attn_varlen_func`` when flash-attn is importable (CUDA, fp16/bf16), else to SDPA
  over a padded view; then unpack. This path serves video-only calls (``num_text == 0``, Wan's
  self-attention): joint text attention (HunyuanVideo) is declared out of its limits and goes to
  ``triton`` or ``torch``.
* ``xformers`` is not a backend name of the dispatch layer; inside the partition path, when
  flash-attn is missing and xformers is importable, its ``memory_efficient_attention`` with a
  block-diagonal mask serves the packed windows instead of SDPA.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from surf_accel import _extension
from surf_accel.ops import backends as _backends
from surf_accel.ops import window_reference
from surf_accel.ops.checks import SUPPORTED_DTYPES
from surf_accel.ops.dispatch import Op

MAX_HEAD_DIM = 256


# ----------------------------------------------------------------------------------------------
# validation
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
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, S, heads, D), got shape {tuple(t.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q has dtype {q.dtype}; supported: float32, float16, bfloat16")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but q has {tuple(q.shape)}; they must match")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but q has {q.dtype}; cast them to one dtype")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; move them to one device")
    if q.numel() == 0:
        raise ValueError(f"q is empty (shape {tuple(q.shape)})")
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


# ----------------------------------------------------------------------------------------------
# triton backend, wrapped as a custom op so torch.compile sees an opaque node
@torch.library.custom_op("surf_accel_triton::window_attention", mutates_args=())
def _triton_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                             window: list[int], shift: list[int], num_text: int,
                             text_mask: Optional[torch.Tensor]) -> torch.Tensor:
    from surf_accel.triton_kernels import window_attention as kernels
    return kernels.window_attention(q, k, v, grid, window, shift, num_text, text_mask)


@_triton_window_attention.register_fake
def _(q, k, v, grid, window, shift, num_text, text_mask):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


def _triton_impl(q, k, v, grid, window, shift, num_text, text_mask):
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


# ----------------------------------------------------------------------------------------------
# cuda / cpp backend: compiled pack/unpack kernels + flash-attn varlen / xformers / SDPA
_PARTITION_OPS = ("window_pack", "window_unpack")

if _extension.load():
    if hasattr(torch.ops.surf_accel, "window_pack"):
        @torch.library.register_fake("surf_accel::window_pack")
        def _(x, grid, window, shift):
            n = grid[0] * grid[1] * grid[2]
            return x.new_empty((x.shape[0] * n, x.shape[2], x.shape[3]))

    if hasattr(torch.ops.surf_accel, "window_unpack"):
        @torch.library.register_fake("surf_accel::window_unpack")
        def _(packed, grid, window, shift, batch):
            n = grid[0] * grid[1] * grid[2]
            return packed.new_empty((batch, n, packed.shape[1], packed.shape[2]))


@functools.lru_cache(maxsize=64)
def window_seqlens(grid: tuple[int, int, int], window: tuple[int, int, int],
                   shift: tuple[int, int, int]) -> tuple[int, ...]:
    """Token count of every window in packed order (window indices lexicographic over (t, h, w))."""
    segs = [window_reference.axis_segments(g, w, s) for g, w, s in zip(grid, window, shift)]
    return tuple((te - ts) * (he - hs) * (we - ws) for ts, te in segs[0] for hs, he in segs[1] for ws, we in segs[2])


@functools.lru_cache(maxsize=64)
def _cu_seqlens(grid, window, shift, batch: int, device: torch.device) -> tuple[torch.Tensor, int]:
    lens = torch.tensor(window_seqlens(grid, window, shift) * batch, dtype=torch.int32)
    cu = torch.zeros(lens.numel() + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lens, 0)
    return cu.to(device), int(lens.max())


def flash_attn_reason() -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install flash-attn)"
    return None


def xformers_reason() -> str | None:
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed"
    return None


def _varlen_sdpa(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, cu: torch.Tensor, max_len: int) -> torch.Tensor:
    """Attention within each packed sequence via SDPA over a padded ``(nseq, heads, Lmax, D)`` view."""
    lens = cu[1:] - cu[:-1]
    n_seq = lens.numel()
    pos = torch.arange(max_len, device=qp.device)
    valid = pos[None] < lens[:, None]
    rows = (cu[:-1, None].long() + pos[None]).clamp_max(qp.shape[0] - 1)

    def padded(x):
        return x[rows].transpose(1, 2)  # (nseq, heads, Lmax, D)

    out = F.scaled_dot_product_attention(padded(qp), padded(kp), padded(vp), attn_mask=valid[:, None, None, :])
    seq_of_row = torch.repeat_interleave(torch.arange(n_seq, device=qp.device), lens.long(), output_size=qp.shape[0])
    flat = seq_of_row * max_len + (torch.arange(qp.shape[0], device=qp.device) - cu[:-1].long()[seq_of_row])
    return out.transpose(1, 2).reshape(n_seq * max_len, *qp.shape[1:])[flat]


def _packed_attention(qp, kp, vp, cu, max_len, grid, window, shift, batch):
    if qp.is_cuda and qp.dtype in (torch.float16, torch.bfloat16):
        if flash_attn_reason() is None:
            from flash_attn import flash_attn_varlen_func
            return flash_attn_varlen_func(qp, kp, vp, cu, cu, max_len, max_len)
        if xformers_reason() is None:
            from xformers.ops import fmha
            bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(window_seqlens(grid, window, shift)) * batch)
            return fmha.memory_efficient_attention(qp[None], kp[None], vp[None], attn_bias=bias)[0]
    return _varlen_sdpa(qp, kp, vp, cu, max_len)


def _partition_impl(q, k, v, grid, window, shift, num_text, text_mask):
    b = q.shape[0]
    g, w, s = list(grid), list(window), list(shift)
    pack = torch.ops.surf_accel.window_pack
    qp, kp, vp = pack(q, g, w, s), pack(k, g, w, s), pack(v, g, w, s)
    cu, max_len = _cu_seqlens(tuple(grid), tuple(window), tuple(shift), b, q.device)
    out = _packed_attention(qp, kp, vp, cu, max_len, tuple(grid), tuple(window), tuple(shift), b)
    return torch.ops.surf_accel.window_unpack(out.contiguous(), g, w, s, b)


def _kernels_reason(key: str) -> str | None:
    for name in _PARTITION_OPS:
        if not _extension.load() or not hasattr(torch.ops.surf_accel, name) or \
                not torch._C._dispatch_has_kernel_for_dispatch_key(f"surf_accel::{name}", key):
            return f"the built extension has no {key} kernel for {name}; rebuild surf_accel"
    return None


# Decided once at import (the extension is loaded above): plain data that torch.compile can trace.
_KERNELS_REASON = {key: _kernels_reason(key) for key in ("CPU", "CUDA")}


def _partition_kernels(key: str):
    """Call-independent check: the built extension has the pack/unpack kernels for ``key``."""
    def check() -> str | None:
        return _KERNELS_REASON[key]
    return check


def _partition_limits(key: str):
    kernels = _partition_kernels(key)

    def check(*args) -> str | None:
        reason = kernels()
        if reason is None and len(args) == 8 and args[6]:  # num_text
            reason = ("the partition path packs video windows only; joint video+text attention "
                      "(num_text > 0) runs on the triton or torch backend")
        return reason
    return check


# The torch and partition paths index with host-side tables and data-dependent sizes; wrapped as
# opaque custom ops (like the Triton launcher) so torch.compile traces a model through them.
@torch.library.custom_op("surf_accel_window::torch_window_attention", mutates_args=())
def _torch_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                            window: list[int], shift: list[int], num_text: int,
                            text_mask: Optional[torch.Tensor]) -> torch.Tensor:
    return window_reference.window_attention_partitioned(q, k, v, grid, window, shift, num_text, text_mask).contiguous()


@torch.library.custom_op("surf_accel_window::partition_window_attention", mutates_args=())
def _partition_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                                window: list[int], shift: list[int], num_text: int,
                                text_mask: Optional[torch.Tensor]) -> torch.Tensor:
    return _partition_impl(q, k, v, tuple(grid), tuple(window), tuple(shift), num_text, text_mask)


for _op in (_torch_window_attention, _partition_window_attention):
    _op.register_fake(lambda q, k, v, grid, window, shift, num_text, text_mask:
                      torch.empty_like(q, memory_format=torch.contiguous_format))


def _opaque(op):
    def call(q, k, v, grid, window, shift, num_text, text_mask):
        return op(q, k, v, list(grid), list(window), list(shift), num_text, text_mask)
    return call


WINDOW_ATTENTION = Op(
    "window_attention",
    impls={"torch": _opaque(_torch_window_attention), "cpp": _opaque(_partition_window_attention),
           "cuda": _opaque(_partition_window_attention), "triton": _triton_impl},
    limits={"cpp": _partition_limits("CPU"), "cuda": _partition_limits("CUDA"), "triton": _triton_limits},
)
if hasattr(WINDOW_ATTENTION, "requires"):  # call-independent checks, reported by explain()
    WINDOW_ATTENTION.requires.update(cpp=_partition_kernels("CPU"), cuda=_partition_kernels("CUDA"))
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
    backend: str | None = None,
) -> torch.Tensor:
    """Shifted-window attention over a ``(T, H, W)`` token grid (SPEC 3.2).

    ``q, k, v``: ``(B, S, heads, D)`` with ``S = T*H*W + num_text`` (video tokens t-major, then
    text tokens). Along each axis a token's window index is ``(i + shift) // window`` (edge windows
    are partial; a window >= the axis covers it); ``0 <= shift < window``. Video queries attend to
    their window plus all valid text keys; text queries attend to every valid key; ``text_mask``
    ``(B, num_text)`` bool marks valid text tokens (None: all valid). Softmax scale ``D ** -0.5``.
    Returns ``(B, S, heads, D)`` in the input dtype.
    """
    grid, window, shift = _validate(q, k, v, grid, window, shift, num_text, text_mask)
    return WINDOW_ATTENTION(q, k, v, grid, window, shift, num_text, text_mask,
                            device=q.device, dtype=q.dtype, backend=backend)
