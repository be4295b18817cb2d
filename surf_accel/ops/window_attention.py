"""Shifted-window attention (docs/design.md 3.2): public entry point, validation and one implementation per
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
  Temporal-only windows (whole H and W) without text are already contiguous slabs of the t-major
  token order, and so is each part of a shifted block's split edge window (docs/design.md 3.2's partial edge
  windows are Swin's wrapped window and its mask): no pack/unpack, the varlen call reads q, k, v in
  place through cu_seqlens offsets (SDPA on strided per-slab views without a varlen library).
  With text, the valid text lengths are host ints (``text_lengths``, or one ``tolist`` per call):
  every index table is cached on the device per shape, so a layer never waits for the host.
* ``xformers`` is not a backend name of the dispatch layer; inside the partition path, when
  flash-attn is missing and xformers is importable, its ``memory_efficient_attention`` with a
  block-diagonal mask serves the packed windows instead of SDPA.
* ``flex``: ``torch.nn.attention.flex_attention`` with a block mask built from the window ids
  (compiled on CUDA, eager on CPU): torch-native, a second oracle, never chosen automatically.

Automatic choice (``_preference``): on CUDA the partition path only when a varlen library serves
the dtype (flash-attn, else xformers; fp16/bf16), else the fused Triton kernel, whose only
alternative would be padded SDPA over gathered windows; logged once with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
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


@functools.lru_cache(maxsize=128)
def _cu_seqlens(lens: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, int]:
    """int32 offsets of consecutive sequences of lengths ``lens`` (on ``device``, built once per
    shape: no host-to-device copy per layer) and the longest length."""
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32), 0)
    return cu.to(device), max(lens)


@functools.cache
def flash_attn_reason() -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install flash-attn)"
    return None


@functools.cache
def xformers_reason() -> str | None:
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install xformers)"
    return None


def varlen_library(dtype: torch.dtype) -> str | None:
    """The varlen attention library the partition path uses for ``dtype`` on CUDA, or None (SDPA)."""
    if dtype not in (torch.float16, torch.bfloat16):
        return None
    if flash_attn_reason() is None:
        return "flash-attn"
    if xformers_reason() is None:
        return "xformers"
    return None


def temporal_only(grid: Sequence[int], window: Sequence[int]) -> bool:
    """Windows cover whole H and W: each window is a contiguous range of whole frames."""
    return window[1] >= grid[1] and window[2] >= grid[2]


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
    lib = varlen_library(qp.dtype) if qp.is_cuda else None
    if lib == "flash-attn":
        from flash_attn import flash_attn_varlen_func
        return flash_attn_varlen_func(qp, kp, vp, cu_q, cu_k, max_q, max_k)
    if lib == "xformers":
        from xformers.ops import fmha
        bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(seqlens_q), list(seqlens_k))
        return fmha.memory_efficient_attention(qp[None], kp[None], vp[None], attn_bias=bias)[0]
    return _varlen_sdpa(qp, kp, vp, cu_q, cu_k, max_q, max_k)


def _slab_attention(q, k, v, grid, window, shift):
    """Temporal-only windows, no text: window ``a`` is the contiguous token range of its frames, so
    q, k, v are read in place. With a varlen library: one call over the ``(B*N, heads, D)`` views
    with cu_seqlens offsets, its output viewed back (no copy at all). Else SDPA on strided views,
    one per batch item and run of equal-length windows (at most three runs: a shifted block's first
    part, the whole windows, the tail), writing into one output."""
    b, n, heads, d = q.shape
    seqlens = window_seqlens(grid, window, shift)
    if q.is_cuda and varlen_library(q.dtype) is not None:
        cu, longest = _cu_seqlens(seqlens * b, q.device)
        flat = [x.flatten(0, 1) for x in (q, k, v)]  # views for (B, S)-contiguous strides
        return _packed_attention(*flat, cu, cu, longest, longest, seqlens * b, seqlens * b).view(b, n, heads, d)
    out = torch.empty(b, n, heads, d, dtype=q.dtype, device=q.device)
    start = 0
    for length, run in itertools.groupby(seqlens):
        count = len(list(run))
        stop = start + count * length
        for i in range(b):
            views = [x[i, start:stop].unflatten(0, (count, length)).transpose(1, 2) for x in (q, k, v)]
            res = F.scaled_dot_product_attention(*views)  # (count, heads, length, D)
            out[i, start:stop].view(count, length, heads, d).copy_(res.transpose(1, 2))
        start = stop
    return out


@functools.lru_cache(maxsize=64)
def _text_tables(seqlens: tuple[int, ...], n: int, text_lengths: tuple[int, ...], device: torch.device):
    """Index tables of the packed keys of windows with text, from host ints only (built once per
    shape and text lengths, then cached on ``device``). Keys of window ``w`` of batch ``i``: its
    video rows, then batch ``i``'s valid text rows. Rows index ``cat([packed video (B*N), valid text
    rows batch by batch])``. Returns (rows, cu_seqlens_k, longest, per-window key lengths)."""
    b, n_win = len(text_lengths), len(seqlens)
    win_len = torch.tensor(seqlens)
    win_start = torch.cumsum(win_len, 0) - win_len
    nv = torch.tensor(text_lengths)
    text_start = b * n + torch.cumsum(nv, 0) - nv
    seg_len = (win_len[None, :] + nv[:, None]).reshape(-1)  # (B * nWin)
    seg = torch.repeat_interleave(torch.arange(b * n_win), seg_len)
    j = torch.arange(seg.numel()) - (torch.cumsum(seg_len, 0) - seg_len)[seg]
    bi, wi = seg // n_win, seg % n_win
    rows = torch.where(j < win_len[wi], bi * n + win_start[wi] + j, text_start[bi] + j - win_len[wi])
    lens_k = tuple(seg_len.tolist())
    cu_k, longest = _cu_seqlens(lens_k, device)
    return rows.to(device), cu_k, longest, lens_k


def _with_text(kp, vp, k, v, n, tm, seqlens, text_lengths):
    """Append each batch's valid text keys/values to every one of its windows: packed K, V, their
    cu_seqlens, the longest and the per-window lengths ``len(window) + valid text of its batch``."""
    # Flat indices of the valid text tokens, batch by batch: their count is known on the host, so a
    # stable sort (valid first) replaces boolean indexing, which would wait for the device.
    valid = torch.argsort((~tm).flatten().to(torch.int8), stable=True)[:sum(text_lengths)]
    k_all = torch.cat([kp, k[:, n:].flatten(0, 1)[valid]], 0)
    v_all = torch.cat([vp, v[:, n:].flatten(0, 1)[valid]], 0)
    rows, cu_k, longest, lens_k = _text_tables(tuple(seqlens), n, tuple(text_lengths), k.device)
    return k_all[rows], v_all[rows], cu_k, longest, lens_k


def _pack(x, grid, window, shift):
    return torch.ops.surf_accel.window_pack(x, grid, window, shift)


def _partition_impl(q, k, v, grid, window, shift, num_text, text_mask, text_lengths):
    b, s = q.shape[0], q.shape[1]
    n = s - num_text
    if not num_text and temporal_only(grid, window):
        return _slab_attention(q, k, v, tuple(grid), tuple(window), tuple(shift))
    g, w, sh = list(grid), list(window), list(shift)
    qp, kp, vp = _pack(q, g, w, sh), _pack(k, g, w, sh), _pack(v, g, w, sh)
    seqlens = window_seqlens(tuple(grid), tuple(window), tuple(shift))
    cu_q, max_q = _cu_seqlens(seqlens * b, q.device)
    if not num_text:
        out = _packed_attention(qp, kp, vp, cu_q, cu_q, max_q, max_q, seqlens * b, seqlens * b)
        return torch.ops.surf_accel.window_unpack(out.contiguous(), g, w, sh, b)
    if text_mask is None:
        tm, text_lengths = torch.ones(b, num_text, dtype=torch.bool, device=q.device), (num_text,) * b
    else:
        tm = text_mask
        if text_lengths is None:  # the one host sync of this path: callers pass text_lengths to avoid it
            text_lengths = tuple(tm.sum(1).tolist())
    kp, vp, cu_k, max_k, lens_k = _with_text(kp, vp, k, v, n, tm, seqlens, text_lengths)
    out = _packed_attention(qp, kp, vp, cu_q, cu_k, max_q, max_k, seqlens * b, lens_k)
    out_video = torch.ops.surf_accel.window_unpack(out.contiguous(), g, w, sh, b)
    # Text queries: every video key and every valid text key (padded ones zeroed and masked).
    key_ok = torch.cat([torch.ones(b, n, dtype=torch.bool, device=q.device), tm], 1)
    k_all = k.masked_fill(~key_ok[:, :, None, None], 0)
    v_all = v.masked_fill(~key_ok[:, :, None, None], 0)
    out_text = F.scaled_dot_product_attention(q[:, n:].transpose(1, 2), k_all.transpose(1, 2), v_all.transpose(1, 2),
                                              attn_mask=key_ok[:, None, None, :]).transpose(1, 2)
    return torch.cat([out_video, out_text], 1)


# ----------------------------------------------------------------------------------------------
# flex backend: torch's flex_attention with a block mask from the window ids
FLEX_BLOCK = 128


def flex_block_tables(groups: torch.Tensor, allowed: torch.Tensor, partial_keys: torch.Tensor | None,
                      device: torch.device, block: int = FLEX_BLOCK):
    """The block structure of a token-pair mask that factors through groups: query ``i`` may attend to
    key ``j`` iff ``allowed[groups[i], groups[j]]``. ``groups (S,)`` int64 in ``[0, G)``, ``allowed
    (G, G)`` bool; ``partial_keys (S,)`` bool (or None) marks keys whose validity is decided per batch
    item by the mask_mod (a block holding one is never "full"). Counting allowed token pairs per block
    pair (one-hot occupancy ``O``, ``O A O^T``) lists a block if it holds one and marks it full if it
    holds ``block**2`` (padding holds none, so a partial last block is never full). Returns
    (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices) shaped (1, 1, nb[, nb])."""
    s = groups.numel()
    nb = -(-s // block)
    occ = torch.zeros(nb, allowed.shape[0], dtype=torch.float64)
    occ.index_put_((torch.arange(s) // block, groups.cpu()), torch.ones(s, dtype=torch.float64), accumulate=True)
    pairs = occ @ allowed.cpu().double() @ occ.T
    full = pairs == block * block
    if partial_keys is not None:
        has_partial = torch.zeros(nb, dtype=torch.bool).index_put_((torch.arange(s) // block,), partial_keys.cpu(),
                                                                   accumulate=True)
        full &= ~has_partial[None, :]
    partial = (pairs > 0) & ~full

    def blocks(m: torch.Tensor):
        order = torch.argsort((~m).to(torch.int8), dim=1, stable=True).to(torch.int32)  # allowed blocks first
        return m.sum(1).to(torch.int32)[None, None].to(device), order[None, None].to(device)

    return (*blocks(partial), *blocks(full))


@functools.lru_cache(maxsize=32)
def _flex_tables(grid: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int],
                 num_text: int, key_mask: bool, device: torch.device):
    """Token ids and block structure of the allowed pairs, batch-independent (text keys of a masked
    call stay partial blocks: their validity is per batch item). ``ids (S_pad,)`` int32: window id
    of video tokens, -1 text, -2 padding to whole blocks (flex may evaluate the mask there). Returns
    (ids, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices) shaped (1, 1, nb[, nb])."""
    vid = window_reference.window_ids(grid, window, shift)
    n = vid.numel()
    s = n + num_text
    nb = -(-s // FLEX_BLOCK)
    ids = torch.full((nb * FLEX_BLOCK,), -2, dtype=torch.int64)
    ids[:n] = vid
    ids[n:s] = -1
    n_win = int(vid.max()) + 1
    # groups: one per window, the last one text (sees and is seen by every token)
    allowed = torch.eye(n_win + 1, dtype=torch.bool)
    allowed[n_win, :] = allowed[:, n_win] = True
    groups = torch.where(ids[:s] >= 0, ids[:s], n_win)
    text_keys = (ids[:s] == -1) if key_mask else None
    return (ids.to(torch.int32).to(device), *flex_block_tables(groups, allowed, text_keys, device))


@functools.cache
def compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def flex_window_attention(q, k, v, grid, window, shift, num_text=0, text_mask=None, *, compiled: bool | None = None):
    """``flex_attention`` over ``(B, S, heads, D)`` with the window block mask; ``compiled`` (default:
    on CUDA) runs torch.compile's fused kernel, else flex's eager implementation."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    b, s, _, _ = q.shape
    n = s - num_text
    ids, kv_num, kv_idx, full_num, full_idx = _flex_tables(tuple(grid), tuple(window), tuple(shift), num_text,
                                                           text_mask is not None, q.device)

    def allowed(qi, ki):
        qid, kid = ids[qi], ids[ki]
        return (qid == kid) | (qid == -1) | (kid == -1)

    if text_mask is None:
        def mask_mod(bi, hi, qi, ki):
            return allowed(qi, ki)
    else:
        key_ok = torch.zeros(b, ids.numel(), dtype=torch.bool, device=q.device)
        key_ok[:, :n] = True
        key_ok[:, n:s] = text_mask

        def mask_mod(bi, hi, qi, ki):
            return allowed(qi, ki) & key_ok[bi, ki]

    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                  seq_lengths=(s, s))
    fn = compiled_flex() if (q.is_cuda if compiled is None else compiled) else flex_attention
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=bm)
    return out.transpose(1, 2).contiguous()


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
                            text_mask: Optional[torch.Tensor], text_lengths: Optional[list[int]]) -> torch.Tensor:
    return window_reference.window_attention_partitioned(q, k, v, grid, window, shift, num_text, text_mask).contiguous()


@torch.library.custom_op("surf_accel_window::partition_window_attention", mutates_args=())
def _partition_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                                window: list[int], shift: list[int], num_text: int,
                                text_mask: Optional[torch.Tensor], text_lengths: Optional[list[int]]) -> torch.Tensor:
    return _partition_impl(q, k, v, tuple(grid), tuple(window), tuple(shift), num_text, text_mask,
                           None if text_lengths is None else tuple(text_lengths))


@torch.library.custom_op("surf_accel_window::flex_window_attention", mutates_args=())
def _flex_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                           window: list[int], shift: list[int], num_text: int,
                           text_mask: Optional[torch.Tensor], text_lengths: Optional[list[int]]) -> torch.Tensor:
    return flex_window_attention(q, k, v, grid, window, shift, num_text, text_mask)


for _op in (_torch_window_attention, _partition_window_attention, _flex_window_attention):
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
    traffic); the fused Triton kernel needs no pack copies and skips blocks outside the windows."""
    if device.type == "cuda":
        lib = varlen_library(dtype)
        if lib is not None:
            return ("cuda", "triton", "torch"), f"{lib} varlen attention serves the windows (temporal ones in place)"
        missing = ("fp16/bf16 only" if dtype not in (torch.float16, torch.bfloat16)
                   else f"{flash_attn_reason()}; {xformers_reason()}")
        return ("triton", "cuda", "torch"), (f"fused Triton kernel; no varlen attention library for {dtype} "
                                             f"({missing}), so the partition path would fall back to padded SDPA")
    return ("cpp", "torch"), "C++ pack/unpack + SDPA (temporal windows: SDPA on the in-place frame slabs)"


WINDOW_ATTENTION = Op(
    "window_attention",
    impls={"torch": _opaque(_torch_window_attention), "cpp": _opaque(_partition_window_attention),
           "cuda": _opaque(_partition_window_attention), "triton": _triton_impl,
           "flex": _opaque(_flex_window_attention)},
    requires={"cpp": _partition_kernels("CPU"), "cuda": _partition_kernels("CUDA")},
    limits={"cpp": _partition_limits("CPU"), "cuda": _partition_limits("CUDA"), "triton": _triton_limits},
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
