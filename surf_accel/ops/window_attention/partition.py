"""``cuda`` / ``cpp`` backends of ``window_attention`` (the partition path): the compiled
``surf_accel::window_pack`` / ``window_unpack`` kernels (CUDA on GPU, their C++ twin on CPU) pack the
video tokens window-contiguously; the packed windows go to ``flash_attn.flash_attn_varlen_func`` when
flash-attn is usable (CUDA, fp16/bf16), else to SDPA over a padded view; then unpack.

Layouts: ``q, k, v`` ``(B, S, heads, D)`` with ``S = T*H*W + num_text``; packed tensors
``(B * T*H*W, heads, D)``, windows in lexicographic (t, h, w) order, each window's tokens t-major,
batch items one after the other; ``cu_seqlens`` int32 ``(nseq + 1,)``. Returns ``(B, S, heads, D)``.

With text tokens, each window's key/value sequence is its video tokens followed by its batch's
valid text tokens (gathered once per call: the text K/V are duplicated per window,
``nWin * valid_text`` extra rows), so one varlen call serves video queries exactly; text queries
attend densely (SDPA with a key mask) to all valid keys.
Temporal-only windows (whole H and W) without text are already contiguous slabs of the t-major
token order, and so is each part of a shifted block's split edge window (docs/design.md 3.2's partial edge
windows are Swin's wrapped window and its mask): no pack/unpack, the varlen call reads q, k, v in
place through cu_seqlens offsets (SDPA on strided per-slab views without a varlen library).
With text, the valid text lengths are host ints (``text_lengths``, or one ``tolist`` per call):
every index table is cached on the device per shape, so a layer never waits for the host.

The varlen library (``varlen_library``): flash-attn, else xformers (not a backend name of the
dispatch layer: when flash-attn is unusable and xformers is usable, its
``memory_efficient_attention`` with a block-diagonal mask serves the packed windows instead of
SDPA), else SDPA. A library is usable once it imports and a tiny varlen call on the device gives the
right answer (``varlen_reason``): a broken build is skipped with its reason, not met mid-model.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import logging
from collections.abc import Sequence
from typing import Optional

import torch
import torch.nn.functional as F

from surf_accel import _extension
from surf_accel.ops import window_reference

logger = logging.getLogger("surf_accel")

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


# Varlen attention libraries by preference: (module to import, distribution to install).
VARLEN_LIBRARIES = {"flash-attn": ("flash_attn", "flash-attn"), "xformers": ("xformers.ops", "xformers")}


@functools.cache
def import_reason(library: str) -> str | None:
    """Why ``library`` (a key of ``VARLEN_LIBRARIES``) cannot be imported, or None. An installed
    library whose import fails (a build for another torch or CUDA: undefined symbols, missing
    shared objects) is logged once at WARNING."""
    module, dist = VARLEN_LIBRARIES[library]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        return f"{library} is not installed (pip install {dist})"
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - whatever a broken build raises makes it unavailable
        reason = f"{library} is installed but `import {module}` fails: {_first_line(exc)}"
        logger.warning("surf_accel: %s; window attention will not use it", reason)
        return reason
    return None


def varlen_reason(library: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why ``library`` cannot serve packed windows of ``dtype`` on ``device``, or None: not
    installed, its import fails, or a tiny varlen call on the device raises or gives a wrong answer
    (decided once per library, device and dtype; a failure is logged once at WARNING)."""
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
    return import_reason(library) or _probe_reason(library, device, dtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _flash_varlen(qp, kp, vp, cu_q, cu_k, max_q, max_k, seqlens_q, seqlens_k):
    from flash_attn import flash_attn_varlen_func  # optional dependency (import_reason)
    return flash_attn_varlen_func(qp, kp, vp, cu_q, cu_k, max_q, max_k)


def _xformers_varlen(qp, kp, vp, cu_q, cu_k, max_q, max_k, seqlens_q, seqlens_k):
    from xformers.ops import fmha  # optional dependency (import_reason)
    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(list(seqlens_q), list(seqlens_k))
    return fmha.memory_efficient_attention(qp[None], kp[None], vp[None], attn_bias=bias)[0]


_VARLEN_CALLS = {"flash-attn": _flash_varlen, "xformers": _xformers_varlen}


@functools.cache
def _probe_reason(library: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Run the library's varlen call as the partition path does, on two packed sequences (3 and 5
    tokens, 2 heads of 64) on ``device``, against per-sequence attention in float64. The error
    allowed is 8 ulps of 1 in ``dtype`` on outputs of magnitude <= ~3: the inputs are exact in
    ``dtype``, and the library rounds its probabilities and its output once each (<= ~3 ulps of 1
    together); a wrong kernel (a build for another architecture, a broken mask) errs by O(1)."""
    seqlens = (3, 5)
    gen = torch.Generator().manual_seed(0)
    host = [torch.randn(sum(seqlens), 2, 64, generator=gen).to(dtype) for _ in range(3)]
    ref = torch.cat([F.scaled_dot_product_attention(*(x[a:a + n].double().transpose(0, 1) for x in host))
                     for a, n in zip((0, seqlens[0]), seqlens)], dim=1).transpose(0, 1)
    try:
        qp, kp, vp = (x.to(device) for x in host)
        cu, longest = _cu_seqlens(seqlens, device)
        out = _VARLEN_CALLS[library](qp, kp, vp, cu, cu, longest, longest, seqlens, seqlens)
        err = float((out.double().cpu() - ref).abs().max())
    except Exception as exc:  # noqa: BLE001 - any failure of the test call makes the library unavailable
        reason = f"{library} failed a test call on {device}/{dtype}: {_first_line(exc)}"
    else:
        if err <= 8 * torch.finfo(dtype).eps:
            return None
        reason = f"{library} gave wrong results in a test call on {device}/{dtype} (max error {err:.3g})"
    logger.warning("surf_accel: %s; window attention will not use it", reason)
    return reason


def varlen_library(device: torch.device, dtype: torch.dtype) -> str | None:
    """The varlen attention library the partition path uses for ``dtype`` on ``device``, or None (SDPA)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return None
    return next((lib for lib in VARLEN_LIBRARIES if varlen_reason(lib, device, dtype) is None), None)


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
    lib = varlen_library(qp.device, qp.dtype)
    if lib is not None:
        return _VARLEN_CALLS[lib](qp, kp, vp, cu_q, cu_k, max_q, max_k, seqlens_q, seqlens_k)
    return _varlen_sdpa(qp, kp, vp, cu_q, cu_k, max_q, max_k)


def _slab_attention(q, k, v, grid, window, shift):
    """Temporal-only windows, no text: window ``a`` is the contiguous token range of its frames, so
    q, k, v are read in place. With a varlen library: one call over the ``(B*N, heads, D)`` views
    with cu_seqlens offsets, its output viewed back (no copy at all). Else SDPA on strided views,
    one per batch item and run of equal-length windows (at most three runs: a shifted block's first
    part, the whole windows, the tail), writing into one output."""
    b, n, heads, d = q.shape
    seqlens = window_seqlens(grid, window, shift)
    if varlen_library(q.device, q.dtype) is not None:
        cu, longest = _cu_seqlens(seqlens * b, q.device)
        # Views for (B, S)-contiguous strides (else a copy); the libraries read D with unit stride.
        flat = [x.flatten(0, 1) if x.stride(-1) == 1 else x.flatten(0, 1).contiguous() for x in (q, k, v)]
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


# Host-side tables and data-dependent sizes: an opaque custom op (like the Triton launcher) so
# torch.compile traces a model through it.
@torch.library.custom_op("surf_accel_window::partition_window_attention", mutates_args=())
def _partition_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                                window: list[int], shift: list[int], num_text: int,
                                text_mask: Optional[torch.Tensor], text_lengths: Optional[list[int]]) -> torch.Tensor:
    return _partition_impl(q, k, v, tuple(grid), tuple(window), tuple(shift), num_text, text_mask,
                           None if text_lengths is None else tuple(text_lengths))
