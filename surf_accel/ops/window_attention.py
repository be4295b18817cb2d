"""Shifted-window attention (SPEC 3.2): public entry point, validation and one implementation per
backend.

Backends:

* ``torch``: windows gathered into a padded batch + one SDPA (``window_reference``); any device.
* ``triton``: one fused flash-style kernel (``surf_accel.triton_kernels.window_attention``) that finds
  window membership by index arithmetic on the t-major token order; handles text tokens.
* ``cuda`` / ``cpp``: the compiled ``surf_accel::window_pack`` / ``window_unpack`` kernels (CUDA on GPU,
  their C++ twin on CPU) pack the video tokens window-contiguously; the packed windows go to
  ``flash_attn.flash_attn_varlen_func`` when flash-attn is importable (CUDA, fp16/bf16), else to SDPA
  over a padded view; then unpack. With text tokens, each window's key/value sequence is its video
  tokens followed by its batch's valid text tokens (gathered once per call: the text K/V are
  duplicated per window, ``nWin * valid_text`` extra rows), so one varlen call serves video queries
  exactly; text queries attend densely (SDPA with a key mask) to all valid keys.
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
from surf_accel.ops import checks, window_reference
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


def _varlen_sdpa(qp: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
                 max_q: int, max_k: int) -> torch.Tensor:
    """Attention of each packed query sequence to its packed key sequence, via SDPA over padded
    ``(nseq, heads, L, D)`` views with a key-padding mask."""
    lens_q, lens_k = cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1]
    n_seq = lens_q.numel()
    pos_q, pos_k = torch.arange(max_q, device=qp.device), torch.arange(max_k, device=qp.device)
    rows_q = (cu_q[:-1, None].long() + pos_q[None]).clamp_max(qp.shape[0] - 1)
    rows_k = (cu_k[:-1, None].long() + pos_k[None]).clamp_max(kp.shape[0] - 1)
    valid_k = pos_k[None] < lens_k[:, None]
    out = F.scaled_dot_product_attention(qp[rows_q].transpose(1, 2), kp[rows_k].transpose(1, 2),
                                         vp[rows_k].transpose(1, 2), attn_mask=valid_k[:, None, None, :])
    seq_of_row = torch.repeat_interleave(torch.arange(n_seq, device=qp.device), lens_q.long(), output_size=qp.shape[0])
    flat = seq_of_row * max_q + (torch.arange(qp.shape[0], device=qp.device) - cu_q[:-1].long()[seq_of_row])
    return out.transpose(1, 2).reshape(n_seq * max_q, *qp.shape[1:])[flat]


def _packed_attention(qp, kp, vp, cu_q, cu_k, max_q, max_k, seqlens_q, seqlens_k):
    if qp.is_cuda and qp.dtype in (torch.float16, torch.bfloat16):
        if flash_attn_reason() is None:
            from flash_attn import flash_attn_varlen_func
            return flash_attn_varlen_func(qp, kp, vp, cu_q, cu_k, max_q, max_k)
        if xformers_reason() is None:
            from xformers.ops import fmha
            bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(seqlens_q, seqlens_k)
            return fmha.memory_efficient_attention(qp[None], kp[None], vp[None], attn_bias=bias)[0]
    return _varlen_sdpa(qp, kp, vp, cu_q, cu_k, max_q, max_k)


def _with_text(kp, vp, k, v, n, num_text, text_mask, seqlens):
    """Append each batch's valid text keys/values to every one of its windows: returns packed K, V
    and their per-window lengths, ``len(window) + valid text of its batch``."""
    b = k.shape[0]
    tm = (torch.ones(b, num_text, dtype=torch.bool, device=k.device) if text_mask is None else text_mask)
    n_valid = tm.sum(1).tolist()  # host sync: the packed length depends on it
    k_all = torch.cat([kp, k[:, n:][tm]], 0)  # video rows (B*N), then the valid text rows batch by batch
    v_all = torch.cat([vp, v[:, n:][tm]], 0)
    n_win = len(seqlens)
    win_len = torch.tensor(seqlens, device=k.device)
    win_start = torch.cumsum(win_len, 0) - win_len
    nv = torch.tensor(n_valid, device=k.device)
    text_start = b * n + torch.cumsum(nv, 0) - nv
    seg_len = (win_len[None, :] + nv[:, None]).reshape(-1)  # (B * nWin)
    total = n * b + n_win * sum(n_valid)
    seg = torch.repeat_interleave(torch.arange(b * n_win, device=k.device), seg_len, output_size=total)
    j = torch.arange(total, device=k.device) - (torch.cumsum(seg_len, 0) - seg_len)[seg]
    bi, wi = seg // n_win, seg % n_win
    rows = torch.where(j < win_len[wi], bi * n + win_start[wi] + j, text_start[bi] + j - win_len[wi])
    lens_k = [w + nvb for nvb in n_valid for w in seqlens]
    return k_all[rows], v_all[rows], lens_k, tm


def _partition_impl(q, k, v, grid, window, shift, num_text, text_mask):
    b, s = q.shape[0], q.shape[1]
    n = s - num_text
    g, w, sh = list(grid), list(window), list(shift)
    pack = torch.ops.surf_accel.window_pack
    qp, kp, vp = pack(q, g, w, sh), pack(k, g, w, sh), pack(v, g, w, sh)
    seqlens = list(window_seqlens(tuple(grid), tuple(window), tuple(shift)))
    cu_q, max_q = _cu_seqlens(tuple(grid), tuple(window), tuple(shift), b, q.device)
    if not num_text:
        out = _packed_attention(qp, kp, vp, cu_q, cu_q, max_q, max_q, seqlens * b, seqlens * b)
        return torch.ops.surf_accel.window_unpack(out.contiguous(), g, w, sh, b)
    kp, vp, lens_k, tm = _with_text(kp, vp, k, v, n, num_text, text_mask, seqlens)
    cu_k = torch.zeros(len(lens_k) + 1, dtype=torch.int32)
    cu_k[1:] = torch.cumsum(torch.tensor(lens_k, dtype=torch.int32), 0)
    out = _packed_attention(qp, kp, vp, cu_q, cu_k.to(q.device), max_q, max(lens_k), seqlens * b, lens_k)
    out_video = torch.ops.surf_accel.window_unpack(out.contiguous(), g, w, sh, b)
    # Text queries: every video key and every valid text key (padded ones zeroed and masked).
    key_ok = torch.cat([torch.ones(b, n, dtype=torch.bool, device=q.device), tm], 1)
    k_all = k.masked_fill(~key_ok[:, :, None, None], 0)
    v_all = v.masked_fill(~key_ok[:, :, None, None], 0)
    out_text = F.scaled_dot_product_attention(q[:, n:].transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2),
                                              attn_mask=key_ok[:, None, None, :]).transpose(1, 2)
    return torch.cat([out_video, out_text], 1)


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
        return kernels()
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
