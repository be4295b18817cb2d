// Index math and per-element arithmetic of the fused latent ops, shared by the CPU kernels
// (csrc/cpu/latent_ops.cpp) and the CUDA kernels (csrc/cuda/latent_ops.cu) so both backends
// compute every output element with the same operations in the same order.
//
// Latents are (B, C, T, H, W) with arbitrary element strides. The kernels walk "planes"
// n = (b * C + c) * T + t and, inside a plane, output rows and columns; every input is read
// through its own strides, so non-contiguous inputs need no copy.
//
// Floating point: all math is fp32. The PyTorch reference (surf_accel/ops/reference.py) runs one
// torch op per arithmetic step, so each step rounds on its own; the helpers below (add/sub/mul/
// div) are single IEEE operations that the compiler must not fuse (nvcc contracts a * b + c into
// an FMA by default, and --use_fast_math would make division approximate: the __f*_rn intrinsics
// are exempt from both). The one place the reference itself fuses is the interpolation inside
// F.interpolate(mode="trilinear") on CPU: PyTorch's AVX2/AVX-512 kernels are compiled with FMA
// contraction, so the source coordinate and the two lerps are FMAs there; fma() reproduces that
// (on a CPU without FMA PyTorch's own result differs from it by ~1 ulp).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SURF_HD __host__ __device__ __forceinline__
#else
#define SURF_HD inline
#endif

namespace surf_accel::latent {

// ---------------------------------------------------------------------------------------------
// Arithmetic: one rounding per operation, never contracted.
SURF_HD float add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

SURF_HD float sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

SURF_HD float mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

SURF_HD float div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

// a * b + c with a single rounding.
SURF_HD float fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

template <typename T>
SURF_HD float read_f32(const T* p) {
  return static_cast<float>(*p);
}

// ---------------------------------------------------------------------------------------------
// Geometry.

// Element strides of a 5-D (B, C, T, H, W) tensor.
struct Strides5 {
  int64_t b, c, t, h, w;
};

// Offset of plane n = (b * C + c) * T + t.
SURF_HD int64_t plane_offset(int64_t n, int64_t C, int64_t T, const Strides5& s) {
  const int64_t t = n % T;
  const int64_t bc = n / T;
  return (bc / C) * s.b + (bc % C) * s.c + t * s.t;
}

// ---------------------------------------------------------------------------------------------
// Scalar coefficients. The reference computes them in Python (double) and torch rounds each to
// fp32 when it multiplies an fp32 tensor; build them on the host the same way.

struct ReshiftCoeffs {
  float sigma;      // x0_hat = latents - sigma * model_output
  float sigma_new;  // weight of the noise
  float scale;      // 1 (paper) or 1 - sigma_new (consistent), computed in double
  float area;       // factor * factor, the avg-pool divisor
};

inline ReshiftCoeffs reshift_coeffs(double sigma, double sigma_new, int64_t factor, bool paper) {
  return ReshiftCoeffs{static_cast<float>(sigma), static_cast<float>(sigma_new),
                       static_cast<float>(paper ? 1.0 : 1.0 - sigma_new),
                       static_cast<float>(factor * factor)};
}

struct MixCoeffs {
  float keep;   // 1 - sigma, computed in double
  float sigma;  // weight of the noise
  float ratio;  // 1 / factor as PyTorch's interpolate computes it: float(1.0 / scale_factor)
};

inline MixCoeffs mix_coeffs(double sigma, int64_t factor) {
  return MixCoeffs{static_cast<float>(1.0 - sigma), static_cast<float>(sigma),
                   static_cast<float>(1.0 / static_cast<double>(factor))};
}

struct GuideCoeffs {
  float g;   // guidance scale
  float dt;  // sigma_next - sigma, computed in double
};

inline GuideCoeffs guide_coeffs(double guidance_scale, double sigma, double sigma_next) {
  return GuideCoeffs{static_cast<float>(guidance_scale), static_cast<float>(sigma_next - sigma)};
}

// ---------------------------------------------------------------------------------------------
// reshift_downsample: one output element.
//   out = scale * mean_{di, dj < f} (lat - sigma * mo)[i*f + di, j*f + dj] + sigma_new * noise
// `lat` and `mo` point at the window's top-left element; (lsh, lsw), (msh, msw) are their H and W
// strides. The window is summed row by row, left to right, then divided by f*f: the order of
// F.avg_pool3d. kF > 0 fixes the factor at compile time (unrolled, vectorisable); kF == 0 uses f.
template <int kF, typename T>
SURF_HD float reshift_value(const T* lat, int64_t lsh, int64_t lsw, const T* mo, int64_t msh,
                            int64_t msw, float noise, const ReshiftCoeffs& k, int64_t f) {
  const int64_t F = kF > 0 ? kF : f;
  float sum = 0.0f;
  for (int64_t di = 0; di < F; ++di) {
    for (int64_t dj = 0; dj < F; ++dj) {
      const float x0 = sub(read_f32(lat + di * lsh + dj * lsw), mul(k.sigma, read_f32(mo + di * msh + dj * msw)));
      sum = add(sum, x0);
    }
  }
  return add(mul(k.scale, div(sum, k.area)), mul(k.sigma_new, noise));
}

// ---------------------------------------------------------------------------------------------
// upsample_mix.

// Nearest source index of F.interpolate(mode="nearest"): floor(dst * (1/f)) in fp32, clamped.
// (Equal to dst / f for every factor and size that occurs; kept in PyTorch's form on purpose.)
SURF_HD int64_t nearest_source(int64_t dst, int64_t in_size, float ratio) {
  const int64_t src = static_cast<int64_t>(::floorf(mul(static_cast<float>(dst), ratio)));
  return src < in_size - 1 ? src : in_size - 1;
}

// Two taps of linear interpolation with align_corners=False along one axis.
struct LinearTap {
  int64_t i0, i1;
  float w0, w1;
};

SURF_HD LinearTap linear_tap(int64_t dst, int64_t in_size, int64_t out_size, float ratio) {
  if (in_size == out_size) {  // factor 1: PyTorch copies
    return LinearTap{dst, dst, 1.0f, 0.0f};
  }
  float src = fma(ratio, add(static_cast<float>(dst), 0.5f), -0.5f);
  if (src < 0.0f) src = 0.0f;
  int64_t i0 = static_cast<int64_t>(::floorf(src));
  if (i0 > in_size - 1) i0 = in_size - 1;
  float w1 = sub(src, static_cast<float>(i0));
  w1 = w1 < 0.0f ? 0.0f : (w1 > 1.0f ? 1.0f : w1);
  return LinearTap{i0, i0 < in_size - 1 ? i0 + 1 : i0, sub(1.0f, w1), w1};
}

// Linear interpolation of one input row at a W tap (`row` points at the row's first element).
template <typename T>
SURF_HD float lerp_row(const T* row, int64_t sw, const LinearTap& w) {
  return fma(read_f32(row + w.i0 * sw), w.w0, mul(read_f32(row + w.i1 * sw), w.w1));
}

// Combine two W-interpolated rows with an H tap.
SURF_HD float lerp_rows(float r0, float r1, const LinearTap& h) {
  return fma(r0, h.w0, mul(r1, h.w1));
}

// (1 - sigma) * up + sigma * noise.
SURF_HD float mix(float up, float noise, const MixCoeffs& k) {
  return add(mul(k.keep, up), mul(k.sigma, noise));
}

// ---------------------------------------------------------------------------------------------
// guided_step: latents + dt * (vu + g * (vc - vu)), or latents + dt * vc without v_uncond.
SURF_HD float guided_value(float lat, float vc, float vu, const GuideCoeffs& k) {
  return add(lat, mul(k.dt, add(vu, mul(k.g, sub(vc, vu)))));
}

SURF_HD float guided_value(float lat, float vc, const GuideCoeffs& k) {
  return add(lat, mul(k.dt, vc));
}

}  // namespace surf_accel::latent

// ---------------------------------------------------------------------------------------------
// Host-side helpers shared by the kernel launchers: input checks and dtype dispatch. (The Python
// entry points validate first; these guard direct torch.ops.surf_accel calls.)
#include <optional>

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

// Float, Half and BFloat16 only (the contract of surf_accel.ops.checks).
#define SURF_ACCEL_DISPATCH_LATENT_TYPES(TYPE, NAME, ...)            \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                     \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)       \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)        \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

namespace surf_accel::latent {

inline Strides5 strides_of(const at::Tensor& t) {
  return Strides5{t.stride(0), t.stride(1), t.stride(2), t.stride(3), t.stride(4)};
}

inline void check_latent(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.dim() == 5, op, ": ", name, " must be a 5-D latent (B, C, T, H, W), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but latents has ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but latents is on ",
              ref.device());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef expected) {
  TORCH_CHECK(t.sizes() == expected, op, ": ", name, " has shape ", t.sizes(), ", expected ", expected);
}

inline void check_reshift(const at::Tensor& latents, const at::Tensor& model_output, const at::Tensor& noise,
                          int64_t factor) {
  const char* op = "surf_accel::reshift_downsample";
  check_latent(op, "latents", latents, latents);
  check_latent(op, "model_output", model_output, latents);
  check_latent(op, "noise", noise, latents);
  TORCH_CHECK(factor >= 1, op, ": factor must be >= 1, got ", factor);
  TORCH_CHECK(latents.size(3) % factor == 0 && latents.size(4) % factor == 0, op, ": factor ", factor,
              " must divide H and W, got ", latents.sizes());
  check_shape(op, "model_output", model_output, latents.sizes());
  check_shape(op, "noise", noise,
              {latents.size(0), latents.size(1), latents.size(2), latents.size(3) / factor,
               latents.size(4) / factor});
}

inline void check_upsample(const at::Tensor& latents, const at::Tensor& noise, int64_t factor) {
  const char* op = "surf_accel::upsample_mix";
  check_latent(op, "latents", latents, latents);
  check_latent(op, "noise", noise, latents);
  TORCH_CHECK(factor >= 1, op, ": factor must be >= 1, got ", factor);
  check_shape(op, "noise", noise,
              {latents.size(0), latents.size(1), latents.size(2), latents.size(3) * factor,
               latents.size(4) * factor});
}

inline void check_guided(const at::Tensor& latents, const at::Tensor& v_cond,
                         const std::optional<at::Tensor>& v_uncond) {
  const char* op = "surf_accel::guided_step";
  check_latent(op, "latents", latents, latents);
  check_latent(op, "v_cond", v_cond, latents);
  check_shape(op, "v_cond", v_cond, latents.sizes());
  if (v_uncond.has_value()) {
    check_latent(op, "v_uncond", *v_uncond, latents);
    check_shape(op, "v_uncond", *v_uncond, latents.sizes());
  }
}

}  // namespace surf_accel::latent
