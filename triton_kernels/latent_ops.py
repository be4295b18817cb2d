"""Triton kernels and launchers for the fused latent ops of docs/design.md 3.1.

Latents are ``(B, C, T, H, W)`` and may be non-contiguous: every kernel takes each input's five
strides and computes addresses itself, so no input is copied. Each input element is loaded once
(up to the cache re-reads of pooling/upsampling windows), upcast to fp32 right after the load, and
the result is rounded once into a fresh contiguous output of the input dtype. The fp32 upcast is
also what keeps Triton's interpreter right: it computes bf16 arithmetic wrongly.

Pooling and upsampling kernels tile the output as ``[BLOCK_R, BLOCK_W]``: ``BLOCK_R`` output rows
(a row is one ``(b, c, t, i)``) by ``BLOCK_W`` output columns. Row indices are split into
``(b, c, t, i)`` once per row, so the per-element work is a multiply-add per stride. The guided
step reads and writes identically shaped tensors, so when all are contiguous it runs over the
flat index (vectorised loads); otherwise it uses the same row tiling.

Block sizes are compile-time constants picked by a small heuristic (no ``@triton.autotune``: it
fails in the interpreter). On CPU tensors, i.e. under ``TRITON_INTERPRET=1``, blocks are made much
larger, since each program instance costs milliseconds there.

``aot_specs()`` lists the compile variants the launchers produce, for ``scripts/check_triton_aot.py``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from surf_accel.triton_kernels.launch import Launch, aot_spec, run

# Output elements per program: GPU tile sizes, and interpreter ones (few, big programs).
_GPU_TILE = {"reshift": 512, "upsample": 1024, "guided": 1024, "guided_flat": 2048}
_INTERP_TILE = 1 << 16
_MAX_BLOCK_W = 128
_NUM_WARPS = 4
# Triton's interpreter converts fp32 -> bf16 by truncation, GPUs round to nearest even, and it
# garbles bf16 subnormals both ways: under the interpreter, _load_f32 and _store_cast convert by
# bit manipulation so both give the same values. Compiled code omits those branches.
_INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _load_f32(ptrs, mask):
    """Masked load upcast to fp32 (what all the math runs in)."""
    x = tl.load(ptrs, mask=mask, other=0.0)
    if _INTERPRETED and x.dtype == tl.bfloat16:
        # bf16 is the top half of an fp32: widen the bits (the interpreter's conversion garbles
        # subnormals).
        bits = x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16
        return bits.to(tl.float32, bitcast=True)
    return x.to(tl.float32)


@triton.jit
def _store_cast(x, dtype: tl.constexpr):
    """fp32 ``x`` rounded to nearest even into the output ``dtype``."""
    if _INTERPRETED and dtype == tl.bfloat16:
        # The bf16 bit pattern is the rounded top half of the fp32 one (subnormals and inf too).
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        bits = tl.where(x != x, 0x7FC0, bits)  # noqa: PLR0124 - NaN stays (a quiet) NaN
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return x.to(dtype)


@triton.jit
def _split_rows(rows, C, T, HO):
    """Split flat row indices over (B, C, T, HO) into int64 (b, c, t, i)."""
    i = rows % HO
    r = rows // HO
    t = r % T
    r = r // T
    c = r % C
    b = r // C
    return b.to(tl.int64), c.to(tl.int64), t.to(tl.int64), i.to(tl.int64)


@triton.jit
def _reshift_downsample_kernel(
    lat_ptr, mo_ptr, noise_ptr, out_ptr,
    sigma, scale, sigma_new,
    C, T, HO, WO, n_rows,
    l_sb, l_sc, l_st, l_sh, l_sw,
    m_sb, m_sc, m_st, m_sh, m_sw,
    n_sb, n_sc, n_st, n_sh, n_sw,
    FACTOR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """out[b,c,t,i,j] = scale * mean_{di,dj}(lat - sigma*mo)[b,c,t,i*F+di,j*F+dj] + sigma_new * noise[b,c,t,i,j]."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < n_rows)[:, None] & (cols < WO)[None, :]
    b, c, t, i = _split_rows(rows, C, T, HO)
    hi = i * FACTOR
    l_row = b * l_sb + c * l_sc + t * l_st + hi * l_sh
    m_row = b * m_sb + c * m_sc + t * m_st + hi * m_sh
    wi = cols * FACTOR

    acc = tl.zeros([BLOCK_R, BLOCK_W], dtype=tl.float32)
    # Window order (rows, then columns) is avg_pool's summation order.
    for di in tl.static_range(FACTOR):
        for dj in tl.static_range(FACTOR):
            l_off = (l_row + di * l_sh)[:, None] + ((wi + dj) * l_sw)[None, :]
            m_off = (m_row + di * m_sh)[:, None] + ((wi + dj) * m_sw)[None, :]
            x = _load_f32(lat_ptr + l_off, mask)
            v = _load_f32(mo_ptr + m_off, mask)
            acc += x - sigma * v
    if (FACTOR & (FACTOR - 1)) == 0:
        pooled = acc * (1.0 / (FACTOR * FACTOR))  # exact: a power-of-two reciprocal
    else:
        pooled = tl.math.div_rn(acc, tl.full([BLOCK_R, BLOCK_W], FACTOR * FACTOR, tl.float32))

    n_row = b * n_sb + c * n_sc + t * n_st + i * n_sh
    nz = _load_f32(noise_ptr + n_row[:, None] + (cols * n_sw)[None, :], mask)
    out = scale * pooled + sigma_new * nz
    out_off = rows.to(tl.int64)[:, None] * WO + cols[None, :]
    tl.store(out_ptr + out_off, _store_cast(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_source(dst, n, FACTOR: tl.constexpr):
    """Source taps and weights of linear upsampling by FACTOR, align_corners=False:
    src = (dst + 0.5) / FACTOR - 0.5 clamped below at 0, i0 = floor(src), i1 = min(i0 + 1, n - 1),
    weights (1 - w, w) with w = src - i0. src is the rational (2 dst + 1 - FACTOR) / (2 FACTOR),
    so i0 and w come from integer arithmetic: w is within an ulp of exact, for any dst (an fp32
    src, as F.interpolate computes it, loses accuracy as dst grows)."""
    num = tl.maximum(2 * dst + 1 - FACTOR, 0)
    i0 = tl.minimum(num // (2 * FACTOR), n - 1)
    rem = num - i0 * (2 * FACTOR)  # < 2 * FACTOR: i0 is never clamped for dst < n * FACTOR
    w1 = rem.to(tl.float32) * (1.0 / (2 * FACTOR))  # within an ulp of the exact weight
    i1 = tl.where(i0 < n - 1, i0 + 1, i0)
    return i0, i1, 1.0 - w1, w1


@triton.jit
def _upsample_mix_kernel(
    lat_ptr, noise_ptr, out_ptr,
    one_minus_sigma, sigma,
    C, T, H, W, HO, WO, n_rows,
    l_sb, l_sc, l_st, l_sh, l_sw,
    n_sb, n_sc, n_st, n_sh, n_sw,
    FACTOR: tl.constexpr, BILINEAR: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """out = (1 - sigma) * up(lat) + sigma * noise, up = nearest or (bi/tri)linear, align_corners=False."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < n_rows)[:, None] & (cols < WO)[None, :]
    b, c, t, oi = _split_rows(rows, C, T, HO)
    l_base = b * l_sb + c * l_sc + t * l_st

    if BILINEAR:
        h0, h1, lh0, lh1 = _linear_source(oi.to(tl.int32), H, FACTOR)  # 32-bit index math
        h0, h1 = h0.to(tl.int64), h1.to(tl.int64)
        w0, w1, lw0, lw1 = _linear_source(cols, W, FACTOR)
        r0 = (l_base + h0 * l_sh)[:, None]
        r1 = (l_base + h1 * l_sh)[:, None]
        c0 = (w0 * l_sw)[None, :]
        c1 = (w1 * l_sw)[None, :]
        x00 = _load_f32(lat_ptr + r0 + c0, mask)
        x01 = _load_f32(lat_ptr + r0 + c1, mask)
        x10 = _load_f32(lat_ptr + r1 + c0, mask)
        x11 = _load_f32(lat_ptr + r1 + c1, mask)
        top = x00 * lw0[None, :] + x01 * lw1[None, :]
        bot = x10 * lw0[None, :] + x11 * lw1[None, :]
        up = top * lh0[:, None] + bot * lh1[:, None]
    else:
        hs = oi // FACTOR
        ws = cols // FACTOR
        l_off = (l_base + hs * l_sh)[:, None] + (ws * l_sw)[None, :]
        up = _load_f32(lat_ptr + l_off, mask)

    n_row = b * n_sb + c * n_sc + t * n_st + oi * n_sh
    nz = _load_f32(noise_ptr + n_row[:, None] + (cols * n_sw)[None, :], mask)
    out = one_minus_sigma * up + sigma * nz
    out_off = rows.to(tl.int64)[:, None] * WO + cols[None, :]
    tl.store(out_ptr + out_off, _store_cast(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _guided_combine(x, vc, vu, g, dt, HAS_UNCOND: tl.constexpr):
    if HAS_UNCOND:
        v = vu + g * (vc - vu)
    else:
        v = vc
    return x + dt * v


@triton.jit
def _guided_step_flat_kernel(
    lat_ptr, vc_ptr, vu_ptr, out_ptr,
    g, dt, n,
    HAS_UNCOND: tl.constexpr, BLOCK: tl.constexpr,
):
    """All tensors contiguous: out = lat + dt * (vu + g * (vc - vu)) over the flat index."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = _load_f32(lat_ptr + offs, mask)
    vc = _load_f32(vc_ptr + offs, mask)
    if HAS_UNCOND:
        vu = _load_f32(vu_ptr + offs, mask)
    else:
        vu = vc
    out = _guided_combine(x, vc, vu, g, dt, HAS_UNCOND)
    tl.store(out_ptr + offs, _store_cast(out, out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _guided_step_strided_kernel(
    lat_ptr, vc_ptr, vu_ptr, out_ptr,
    g, dt,
    C, T, H, W, n_rows,
    l_sb, l_sc, l_st, l_sh, l_sw,
    c_sb, c_sc, c_st, c_sh, c_sw,
    u_sb, u_sc, u_st, u_sh, u_sw,
    HAS_UNCOND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Any strides: the same update over [BLOCK_R rows (b, c, t, h)] x [BLOCK_W columns w] tiles."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    mask = (rows < n_rows)[:, None] & (cols < W)[None, :]
    b, c, t, h = _split_rows(rows, C, T, H)
    l_off = (b * l_sb + c * l_sc + t * l_st + h * l_sh)[:, None] + (cols * l_sw)[None, :]
    c_off = (b * c_sb + c * c_sc + t * c_st + h * c_sh)[:, None] + (cols * c_sw)[None, :]
    x = _load_f32(lat_ptr + l_off, mask)
    vc = _load_f32(vc_ptr + c_off, mask)
    if HAS_UNCOND:
        u_off = (b * u_sb + c * u_sc + t * u_st + h * u_sh)[:, None] + (cols * u_sw)[None, :]
        vu = _load_f32(vu_ptr + u_off, mask)
    else:
        vu = vc
    out = _guided_combine(x, vc, vu, g, dt, HAS_UNCOND)
    out_off = rows.to(tl.int64)[:, None] * W + cols[None, :]
    tl.store(out_ptr + out_off, _store_cast(out, out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Launch heuristics
# --------------------------------------------------------------------------------------------


def _tile(n_rows: int, n_cols: int, elements: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_W): columns up to _MAX_BLOCK_W, rows filling ``elements``, neither larger
    than the (power-of-two rounded) extent, so tiny shapes take one small program."""
    block_w = min(triton.next_power_of_2(n_cols), _MAX_BLOCK_W)
    block_r = max(1, min(triton.next_power_of_2(n_rows), elements // block_w))
    return block_r, block_w


def _tile_elements(device: torch.device, kind: str) -> int:
    return _INTERP_TILE if device.type == "cpu" else _GPU_TILE[kind]


def _grid(n_rows: int, n_cols: int, block_r: int, block_w: int) -> tuple[int, int]:
    # Rows on axis 0 (up to 2**31 - 1 programs); column blocks on axis 1 (few).
    return triton.cdiv(n_rows, block_r), triton.cdiv(n_cols, block_w)


# --------------------------------------------------------------------------------------------
# Launchers (inputs validated by surf_accel.ops.latent_ops): each builds its Launch (what the JIT
# specialises on, also what scripts/check_triton_aot.py compiles), then runs it on the inputs' device
# --------------------------------------------------------------------------------------------


def _reshift_launch(latents, model_output, noise, sigma, sigma_new, factor, paper) -> tuple[torch.Tensor, Launch]:
    b, c, t, h, w = latents.shape
    ho, wo = h // factor, w // factor
    out = torch.empty((b, c, t, ho, wo), dtype=latents.dtype, device=latents.device)
    n_rows = b * c * t * ho
    block_r, block_w = _tile(n_rows, wo, _tile_elements(latents.device, "reshift"))
    scale = 1.0 if paper else 1.0 - sigma_new
    return out, Launch(_reshift_downsample_kernel, _grid(n_rows, wo, block_r, block_w),
                       (latents, model_output, noise, out, sigma, scale, sigma_new, c, t, ho, wo, n_rows,
                        *latents.stride(), *model_output.stride(), *noise.stride()),
                       dict(FACTOR=factor, BLOCK_R=block_r, BLOCK_W=block_w, num_warps=_NUM_WARPS))


def _upsample_launch(latents, noise, sigma, factor, bilinear) -> tuple[torch.Tensor, Launch]:
    b, c, t, h, w = latents.shape
    ho, wo = h * factor, w * factor
    out = torch.empty((b, c, t, ho, wo), dtype=latents.dtype, device=latents.device)
    n_rows = b * c * t * ho
    block_r, block_w = _tile(n_rows, wo, _tile_elements(latents.device, "upsample"))
    return out, Launch(_upsample_mix_kernel, _grid(n_rows, wo, block_r, block_w),
                       (latents, noise, out, 1.0 - sigma, sigma, c, t, h, w, ho, wo, n_rows,
                        *latents.stride(), *noise.stride()),
                       dict(FACTOR=factor, BILINEAR=bool(bilinear), BLOCK_R=block_r, BLOCK_W=block_w,
                            num_warps=_NUM_WARPS))


def _guided_launch(latents, v_cond, v_uncond, guidance_scale, sigma, sigma_next) -> tuple[torch.Tensor, Launch]:
    has_uncond = v_uncond is not None
    v_u = v_uncond if has_uncond else v_cond  # placeholder pointer, never read without HAS_UNCOND
    out = torch.empty(latents.shape, dtype=latents.dtype, device=latents.device)
    dt = sigma_next - sigma
    if all(x.is_contiguous() for x in (latents, v_cond, v_u)):
        n = latents.numel()
        block = min(triton.next_power_of_2(n), _tile_elements(latents.device, "guided_flat"))
        return out, Launch(_guided_step_flat_kernel, (triton.cdiv(n, block),),
                           (latents, v_cond, v_u, out, guidance_scale, dt, n),
                           dict(HAS_UNCOND=has_uncond, BLOCK=block, num_warps=_NUM_WARPS))
    b, c, t, h, w = latents.shape
    n_rows = b * c * t * h
    block_r, block_w = _tile(n_rows, w, _tile_elements(latents.device, "guided"))
    return out, Launch(_guided_step_strided_kernel, _grid(n_rows, w, block_r, block_w),
                       (latents, v_cond, v_u, out, guidance_scale, dt, c, t, h, w, n_rows,
                        *latents.stride(), *v_cond.stride(), *v_u.stride()),
                       dict(HAS_UNCOND=has_uncond, BLOCK_R=block_r, BLOCK_W=block_w, num_warps=_NUM_WARPS))


def reshift_downsample(latents: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor,
                       sigma: float, sigma_new: float, factor: int, paper: bool) -> torch.Tensor:
    out, launch = _reshift_launch(latents, model_output, noise, sigma, sigma_new, factor, paper)
    run(launch, latents.device)
    return out


def upsample_mix(latents: torch.Tensor, noise: torch.Tensor, sigma: float, factor: int,
                 bilinear: bool) -> torch.Tensor:
    out, launch = _upsample_launch(latents, noise, sigma, factor, bilinear)
    run(launch, latents.device)
    return out


def guided_step(latents: torch.Tensor, v_cond: torch.Tensor, v_uncond: torch.Tensor | None,
                guidance_scale: float, sigma: float, sigma_next: float) -> torch.Tensor:
    out, launch = _guided_launch(latents, v_cond, v_uncond, guidance_scale, sigma, sigma_next)
    run(launch, latents.device)
    return out


# --------------------------------------------------------------------------------------------
# Ahead-of-time compile variants (scripts/check_triton_aot.py)
# --------------------------------------------------------------------------------------------


def aot_specs() -> list[dict]:
    """The launches of SURF's calls at Wan2.1 720p, from meta tensors (CUDA allocations are aligned
    like their zero address): latents (1, 16, 21, 90, 160) in fp32 (the pipelines keep latents in
    fp32) and bf16, contiguous and, for fp32, as a transposed view (any layout: every stride a
    runtime value); reshift and upsample by the factor SURF uses (2)."""
    shape, low = (1, 16, 21, 90, 160), (1, 16, 21, 45, 80)

    def meta(size, dtype, strided):
        x = torch.empty(size, dtype=dtype, device="meta")
        return x.transpose(-1, -2).contiguous().transpose(-1, -2) if strided else x

    specs = []
    for dtype, strided in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, False)):
        layout = "strided" if strided else "contiguous"
        lat, mo, lat_lo = (meta(size, dtype, strided) for size in (shape, shape, low))
        specs.append(aot_spec(_reshift_launch(lat, mo, meta(low, dtype, False), 0.6, 0.7, 2, False)[1],
                              f"FACTOR=2 {layout}", main=True))
        for bilinear in (False, True):
            specs.append(aot_spec(_upsample_launch(lat_lo, meta(shape, dtype, False), 0.5, 2, bilinear)[1],
                                  f"FACTOR=2 BILINEAR={bilinear} {layout}", main=True))
        for uncond in (meta(shape, dtype, strided), None):
            specs.append(aot_spec(_guided_launch(lat, mo, uncond, 5.0, 0.6, 0.55)[1],
                                  f"HAS_UNCOND={uncond is not None} {layout}", main=True))
    return specs
