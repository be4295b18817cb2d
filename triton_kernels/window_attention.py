"""Fused shifted-window attention (docs/design.md 3.2) for Triton: one flash-style kernel.

Each program owns ``BLOCK_M`` consecutive query tokens of one (batch, head) and reads ``q, k, v``
``(B, S, heads, D)`` in place through their strides (no permute copies). Window membership comes
from index arithmetic on the t-major token index ``n = (t * H + h) * W + w``: window index per axis
``(i + shift) // window``. A video query block only visits the contiguous key range of the temporal
windows it touches, and inside it skips key blocks whose (t, h, w) windows meet none of its rows
before loading them. Video queries then visit the valid text keys; text queries visit every video
key and every valid text key. Online softmax with fp32 statistics and accumulator.

``TEMPORAL`` (constexpr): windows cover whole H and W (the paper's windows). Every key block of the
range then meets some row's window, so the block-wide "any allowed?" test (a reduction and a branch
per iteration that would stall load pipelining) and the h/w window arithmetic are compiled out;
only the temporal index comparison remains, for blocks that straddle two windows.

Tiles: ``configs(head_dim, dtype)``; on a GPU ``@triton.autotune`` picks among them per head dim,
token count and variant; under the interpreter (where multi-config autotune fails, docs/design.md 8) the first
interpreter config runs, and tests pass any config explicitly.

Launch geometry: grid ``(cdiv(N, BLOCK_M) + cdiv(num_text, BLOCK_M), B * heads)``.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from surf_accel.triton_kernels.launch import Launch, aot_spec, run

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


@triton.jit
def _attend_block(q, acc, m_i, l_i, k_base, v_base, offs_n, offs_d, stride_ks, stride_vs, kv_mask, allowed,
                  qk_scale, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """Fold one block of keys/values into the online softmax: loads masked by ``kv_mask``
    (BLOCK_N, BLOCK_D), scores masked by ``allowed`` (broadcast to BLOCK_M x BLOCK_N); fp32 state
    (acc, running max m_i in log2 units, running sum l_i) in, updated state out."""
    k = tl.load(k_base + offs_n[:, None].to(tl.int64) * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + offs_n[:, None].to(tl.int64) * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if IEEE:
        qk = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        qk = tl.dot(q, tl.trans(k))
    qk = tl.where(allowed, qk * qk_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


@triton.jit
def _window_attn_fwd_kernel(
    Q, K, V, O, TM,
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    stride_tb,
    HEADS, N_VIDEO, NUM_TEXT,
    GT, GH, GW,
    WT, WH, WW,
    ST, SH, SW,
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_TEXT_MASK: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, TEMPORAL: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # 64-bit offsets: B * S * heads * D exceeds 2**31 at 1080p and beyond.
    b = (pid_bh // HEADS).to(tl.int64)
    h = (pid_bh % HEADS).to(tl.int64)
    hw = GH * GW
    n_vblocks = tl.cdiv(N_VIDEO, BLOCK_M)
    is_text = pid_m >= n_vblocks

    if is_text:
        row0 = N_VIDEO + (pid_m - n_vblocks) * BLOCK_M
        row_end = N_VIDEO + NUM_TEXT
        k_lo = 0
        k_hi = N_VIDEO
    else:
        row0 = pid_m * BLOCK_M
        row_end = N_VIDEO
        # Temporal windows touched by this block -> one contiguous range of key frames.
        t_first = row0 // hw
        t_last = (tl.minimum(row0 + BLOCK_M, N_VIDEO) - 1) // hw
        a_first = (t_first + ST) // WT
        a_last = (t_last + ST) // WT
        k_lo = tl.maximum(a_first * WT - ST, 0) * hw
        k_hi = tl.minimum((a_last + 1) * WT - ST, GT) * hw

    offs_m = row0 + tl.arange(0, BLOCK_M)
    row_ok = offs_m < row_end
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None].to(tl.int64) * stride_qs + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    # Window ids of the query rows (meaningless for text rows, which ignore them).
    qt = offs_m // hw
    qh = (offs_m // GW) % GH
    qw = offs_m % GW
    qa = (qt + ST) // WT
    qb = (qh + SH) // WH
    qc = (qw + SW) // WW

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh

    # ---- video keys -------------------------------------------------------------------------
    for start_n in range(k_lo, k_hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < k_hi
        kv_mask = col_ok[:, None] & d_ok[None, :]
        if TEMPORAL:
            same = qa[:, None] == ((offs_n // hw + ST) // WT)[None, :]
            allowed = (same | is_text) & col_ok[None, :] & row_ok[:, None]
            acc, m_i, l_i = _attend_block(q, acc, m_i, l_i, k_base, v_base, offs_n, offs_d, stride_ks, stride_vs,
                                          kv_mask, allowed, qk_scale, UPCAST, IEEE)
        else:
            kt = offs_n // hw
            kh = (offs_n // GW) % GH
            kw = offs_n % GW
            same = (qa[:, None] == ((kt + ST) // WT)[None, :]) \
                & (qb[:, None] == ((kh + SH) // WH)[None, :]) \
                & (qc[:, None] == ((kw + SW) // WW)[None, :])
            allowed = (same | is_text) & col_ok[None, :] & row_ok[:, None]
            if tl.max(allowed.to(tl.int32)) > 0:  # skip key blocks outside every row's window
                acc, m_i, l_i = _attend_block(q, acc, m_i, l_i, k_base, v_base, offs_n, offs_d, stride_ks,
                                              stride_vs, kv_mask, allowed, qk_scale, UPCAST, IEEE)

    # ---- text keys: every query sees the valid ones -------------------------------------------
    for start_n in range(N_VIDEO, N_VIDEO + NUM_TEXT, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        col_ok = offs_n < N_VIDEO + NUM_TEXT
        if HAS_TEXT_MASK:
            valid = tl.load(TM + b * stride_tb + (offs_n - N_VIDEO), mask=col_ok, other=0)
            col_ok = col_ok & (valid != 0)
        # Padded text keys/values are masked at the load: whatever they hold never enters.
        acc, m_i, l_i = _attend_block(q, acc, m_i, l_i, k_base, v_base, offs_n, offs_d, stride_ks, stride_vs,
                                      col_ok[:, None] & d_ok[None, :], col_ok[None, :], qk_scale, UPCAST, IEEE)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]  # l_i == 0 only on rows past the end
    o_ptrs = O + b * stride_ob + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_os + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


Config = tuple[int, int, int, int]  # (BLOCK_M, BLOCK_N, num_warps, num_stages)
INTERPRET_CONFIG: Config = (64, 64, 4, 1)


def configs(head_dim: int, dtype: torch.dtype) -> list[Config]:
    """Tile candidates, best guess first. fp32 (run only when forced: the dispatch sends fp32 to SDPA)
    tiles are twice the bytes and use IEEE dots: smaller tiles keep shared memory within sm_80's
    163 KB; head dims above 64 take fewer stages for the same reason (scripts/check_triton_aot.py
    compiles the bf16/fp16 ones)."""
    if dtype == torch.float32:
        return [(64, 32, 4, 2), (32, 32, 4, 2)]
    if head_dim <= 64:
        return [(128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3)]
    # At head dim 128, 4 warps spill: tens of KB per thread at 128 x 64, 24 B at 64 x 64 with text
    # (ptxas, sm_80; benchmarks/results/triton_aot.md): 8 warps for both tiles.
    return [(128, 64, 8, 2), (64, 64, 8, 2)]


@functools.cache
def _autotuned(head_dim: int, dtype: torch.dtype):
    tuned = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st)
             for m, n, w, st in configs(head_dim, dtype)]
    return triton.autotune(tuned, key=["HEAD_DIM", "N_VIDEO", "NUM_TEXT", "TEMPORAL", "HAS_TEXT_MASK"])(
        _window_attn_fwd_kernel)


def _effective(grid, window, shift):
    out_w, out_s = [], []
    for g, w, s in zip(grid, window, shift):
        if w >= g:  # a window covering the axis: one window, shift irrelevant
            w, s = g, 0
        out_w.append(int(w))
        out_s.append(int(s))
    return out_w, out_s


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid, window, shift, num_text: int,
            text_mask: torch.Tensor | None, config: Config | None) -> tuple[torch.Tensor, Launch]:
    """The output and the launch of one call (what the JIT specialises on; also what
    scripts/check_triton_aot.py compiles): the fixed ``config`` or, for None, the autotuner."""
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    b, s, heads, d = q.shape
    n_video = s - num_text
    (wt, wh, ww), (st, sh, sw) = _effective(grid, window, shift)
    out = torch.empty((b, s, heads, d), dtype=q.dtype, device=q.device)
    if text_mask is not None:
        # The kernel reads the mask with unit stride along the text axis; a copy of B * num_text
        # bytes makes any layout (column-major, sliced, expanded) fit.
        tm = text_mask.to(torch.int8, memory_format=torch.contiguous_format)
        stride_tb = tm.stride(0)
    else:
        tm, stride_tb = q, 0
    args = (q, k, v, out, tm,
            q.stride(0), q.stride(1), q.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            stride_tb,
            heads, n_video, num_text,
            int(grid[0]), int(grid[1]), int(grid[2]),
            wt, wh, ww, st, sh, sw,
            (d ** -0.5) * LOG2E)
    flags = dict(HEAD_DIM=d, BLOCK_D=triton.next_power_of_2(d), HAS_TEXT_MASK=text_mask is not None,
                 # The interpreter's bf16/fp16 arithmetic is wrong (docs/design.md 8): compute in fp32 there.
                 UPCAST=INTERPRET and q.dtype != torch.float32, IEEE=q.dtype == torch.float32,
                 TEMPORAL=wh == int(grid[1]) and ww == int(grid[2]))

    def launch_grid(block_m: int) -> tuple[int, int]:
        return triton.cdiv(n_video, block_m) + triton.cdiv(num_text, block_m), b * heads

    if config is None:
        return out, Launch(_autotuned(d, q.dtype), lambda meta: launch_grid(meta["BLOCK_M"]), args, flags)
    block_m, block_n, num_warps, num_stages = config
    return out, Launch(_window_attn_fwd_kernel, launch_grid(block_m), args,
                       dict(flags, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages))


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid, window, shift,
                     num_text: int = 0, text_mask: torch.Tensor | None = None,
                     config: Config | None = None) -> torch.Tensor:
    """Launch the fused kernel. ``q, k, v``: ``(B, S, heads, D)`` (any strides with unit last stride;
    others are made contiguous); returns a contiguous ``(B, S, heads, D)`` in the input dtype.
    ``config``: fixed tiles (BLOCK_M, BLOCK_N, num_warps, num_stages); None autotunes among
    ``configs()`` on a GPU and uses ``INTERPRET_CONFIG`` under the interpreter."""
    if config is None and INTERPRET:
        config = INTERPRET_CONFIG
    out, launch = _launch(q, k, v, grid, window, shift, num_text, text_mask, config)
    run(launch, q.device)
    return out


# ---- ahead-of-time compile specs (scripts/check_triton_aot.py) ----------------------------------
# Main path: the shapes the kernel serves by default (bf16/fp16; fp32 goes to SDPA), each autotune
# candidate (the autotuner compiles and runs every one), temporal windows (the paper's) with text
# (HunyuanVideo 720p: 24 heads, 256 text tokens) and without (Wan2.1 720p: 40 heads); head dim 64 on
# the Wan grid. The 3D path (windows smaller than a frame) is compiled beside it, labelled, not gated.
AOT_SHAPES = {
    "wan 720p": dict(grid=(21, 45, 80), heads=40, num_text=0),
    "hunyuan 720p text": dict(grid=(33, 45, 80), heads=24, num_text=256),
}
AOT_WINDOWS = {"temporal": ((4, 45, 80), (2, 0, 0)), "3d": ((4, 16, 16), (2, 8, 8))}


def aot_specs() -> list[dict]:
    specs = []
    for dtype in (torch.bfloat16, torch.float16):
        for head_dim in (128, 64):
            for shape_name, shape in AOT_SHAPES.items():
                if head_dim == 64 and shape["num_text"]:
                    continue
                for window_name, (window, shift) in AOT_WINDOWS.items():
                    main = window_name == "temporal"
                    if not main and (dtype != torch.bfloat16 or shape["num_text"]):
                        continue
                    grid, heads, num_text = shape["grid"], shape["heads"], shape["num_text"]
                    n = grid[0] * grid[1] * grid[2] + num_text
                    q, k, v = (torch.empty(1, n, heads, head_dim, dtype=dtype, device="meta") for _ in range(3))
                    mask = torch.empty(1, num_text, dtype=torch.bool, device="meta") if num_text else None
                    for config in configs(head_dim, dtype):
                        launch = _launch(q, k, v, grid, window, shift, num_text, mask, config)[1]
                        label = (f"D={head_dim} {config[0]}x{config[1]} w{config[2]} s{config[3]} {window_name} "
                                 f"{shape_name}")
                        specs.append(aot_spec(launch, label, main))
    return specs
