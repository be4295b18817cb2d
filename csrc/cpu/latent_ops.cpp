// CPU kernels of the fused latent ops (docs/design.md 3.1): reshift_downsample, upsample_mix, guided_step.
//
// One pass over memory: every input element is read once (reshift, guided) or from cache
// (upsample re-reads each input row for the f output rows it feeds), the output is written once.
// Work is split over output rows with at::parallel_for; inner loops run along W so that, for
// inputs with unit W stride, the compiler vectorises them. Inputs of any strides are read in
// place. The per-element math lives in csrc/latent_index.h, shared with the CUDA kernels.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "latent_index.h"

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define SURF_ACCEL_X86_FMA_CLONE 1
#define SURF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SURF_ACCEL_X86_FMA_CLONE 0
#define SURF_ALWAYS_INLINE inline
#endif

namespace surf_accel {
namespace {

using namespace surf_accel::latent;

// Elements of work per parallel task (ATen's own grain, at::internal::GRAIN_SIZE).
constexpr int64_t kGrain = 32768;

// Rows of `row_work` elements each per parallel task.
int64_t row_grain(int64_t row_work) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(1, row_work));
}

// ------------------------------------------------------------------------------------------------
// reshift_downsample

struct ReshiftGeom {
  Strides5 lat, mo, noise;
  int64_t C, T, Ho, Wo, f;
};

template <int kF, bool kUnitW, typename scalar_t>
void reshift_rows(scalar_t* out, const scalar_t* lat, const scalar_t* mo, const scalar_t* noise,
                  const ReshiftGeom& g, const ReshiftCoeffs& k, int64_t begin, int64_t end) {
  const int64_t F = kF > 0 ? kF : g.f;
  const int64_t lsw = kUnitW ? 1 : g.lat.w;
  const int64_t msw = kUnitW ? 1 : g.mo.w;
  const int64_t nsw = kUnitW ? 1 : g.noise.w;
  const int64_t lsh = g.lat.h, msh = g.mo.h;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.Ho, i = r % g.Ho;
    const scalar_t* lrow = lat + plane_offset(n, g.C, g.T, g.lat) + i * F * lsh;
    const scalar_t* mrow = mo + plane_offset(n, g.C, g.T, g.mo) + i * F * msh;
    const scalar_t* nrow = noise + plane_offset(n, g.C, g.T, g.noise) + i * g.noise.h;
    scalar_t* orow = out + r * g.Wo;
    for (int64_t j = 0; j < g.Wo; ++j) {
      orow[j] = static_cast<scalar_t>(reshift_value<kF>(lrow + j * F * lsw, lsh, lsw, mrow + j * F * msw,
                                                         msh, msw, read_f32(nrow + j * nsw), k, F));
    }
  }
}

at::Tensor reshift_downsample_cpu(const at::Tensor& latents, const at::Tensor& model_output,
                                  const at::Tensor& noise, double sigma, double sigma_new, int64_t factor,
                                  bool paper) {
  check_reshift(latents, model_output, noise, factor);
  const int64_t B = latents.size(0), C = latents.size(1), T = latents.size(2);
  const int64_t Ho = latents.size(3) / factor, Wo = latents.size(4) / factor;
  at::Tensor out = latents.new_empty({B, C, T, Ho, Wo});  // contiguous, same dtype and device
  if (out.numel() == 0) return out;

  const ReshiftGeom g{strides_of(latents), strides_of(model_output), strides_of(noise), C, T, Ho, Wo, factor};
  const ReshiftCoeffs k = reshift_coeffs(sigma, sigma_new, factor, paper);
  const bool unit_w = g.lat.w == 1 && g.mo.w == 1 && g.noise.w == 1;
  const int64_t rows = B * C * T * Ho;

  SURF_ACCEL_DISPATCH_LATENT_TYPES(latents.scalar_type(), "reshift_downsample_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* l = latents.const_data_ptr<scalar_t>();
    const scalar_t* m = model_output.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(Wo * factor * factor), [&](int64_t begin, int64_t end) {
      if (factor == 2) {
        unit_w ? reshift_rows<2, true>(o, l, m, z, g, k, begin, end)
               : reshift_rows<2, false>(o, l, m, z, g, k, begin, end);
      } else {
        unit_w ? reshift_rows<0, true>(o, l, m, z, g, k, begin, end)
               : reshift_rows<0, false>(o, l, m, z, g, k, begin, end);
      }
    });
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// upsample_mix

struct UpsampleGeom {
  Strides5 lat, noise;
  int64_t C, T, H, Ho, Wo;
};

template <bool kUnitW, typename scalar_t>
void nearest_rows(scalar_t* out, const scalar_t* lat, const scalar_t* noise, const UpsampleGeom& g,
                  const MixCoeffs& k, const int64_t* col_src, int64_t begin, int64_t end) {
  const int64_t lsw = kUnitW ? 1 : g.lat.w;
  const int64_t nsw = kUnitW ? 1 : g.noise.w;
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.Ho, oi = r % g.Ho;
    const scalar_t* row = lat + plane_offset(n, g.C, g.T, g.lat) + nearest_source(oi, g.H, k.ratio) * g.lat.h;
    const scalar_t* nrow = noise + plane_offset(n, g.C, g.T, g.noise) + oi * g.noise.h;
    scalar_t* orow = out + r * g.Wo;
    for (int64_t oj = 0; oj < g.Wo; ++oj) {
      orow[oj] = static_cast<scalar_t>(mix(read_f32(row + col_src[oj] * lsw), read_f32(nrow + oj * nsw), k));
    }
  }
}

// The bilinear source values of one output row, `up[oj]`, before the noise mix. The lerps are
// FMAs (as in PyTorch's CPU kernel, see latent_index.h). std::fma is a libm call unless the code
// is compiled for a CPU with FMA, so on x86 this row loop also has an AVX2+FMA clone chosen at
// run time. Only FMA-exact math may live in these functions: with FMA enabled GCC contracts any
// a * b + c it sees, so the noise mix (separately rounded products) is done by the caller.
template <bool kUnitW, typename scalar_t>
SURF_ALWAYS_INLINE void bilinear_up_row(float* up, const scalar_t* row0, const scalar_t* row1, int64_t sw,
                                        const LinearTap& h, const LinearTap* col_tap, int64_t Wo) {
  const int64_t lsw = kUnitW ? 1 : sw;
  for (int64_t oj = 0; oj < Wo; ++oj) {
    const LinearTap& w = col_tap[oj];
    up[oj] = lerp_rows(lerp_row(row0, lsw, w), lerp_row(row1, lsw, w), h);
  }
}

#if SURF_ACCEL_X86_FMA_CLONE
template <bool kUnitW, typename scalar_t>
__attribute__((target("avx2,fma"))) void bilinear_up_row_fma(float* up, const scalar_t* row0, const scalar_t* row1,
                                                              int64_t sw, const LinearTap& h,
                                                              const LinearTap* col_tap, int64_t Wo) {
  bilinear_up_row<kUnitW>(up, row0, row1, sw, h, col_tap, Wo);
}

bool cpu_has_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <bool kUnitW, typename scalar_t>
void bilinear_rows(scalar_t* out, const scalar_t* lat, const scalar_t* noise, const UpsampleGeom& g,
                   const MixCoeffs& k, const LinearTap* col_tap, int64_t begin, int64_t end) {
  const int64_t nsw = kUnitW ? 1 : g.noise.w;
  std::vector<float> up(g.Wo);
#if SURF_ACCEL_X86_FMA_CLONE
  const bool use_fma = cpu_has_fma();
#endif
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / g.Ho, oi = r % g.Ho;
    const LinearTap h = linear_tap(oi, g.H, g.Ho, k.ratio);
    const scalar_t* plane = lat + plane_offset(n, g.C, g.T, g.lat);
    const scalar_t* row0 = plane + h.i0 * g.lat.h;
    const scalar_t* row1 = plane + h.i1 * g.lat.h;
#if SURF_ACCEL_X86_FMA_CLONE
    if (use_fma) {
      bilinear_up_row_fma<kUnitW>(up.data(), row0, row1, g.lat.w, h, col_tap, g.Wo);
    } else {
      bilinear_up_row<kUnitW>(up.data(), row0, row1, g.lat.w, h, col_tap, g.Wo);
    }
#else
    bilinear_up_row<kUnitW>(up.data(), row0, row1, g.lat.w, h, col_tap, g.Wo);
#endif
    const scalar_t* nrow = noise + plane_offset(n, g.C, g.T, g.noise) + oi * g.noise.h;
    scalar_t* orow = out + r * g.Wo;
    for (int64_t oj = 0; oj < g.Wo; ++oj) {
      orow[oj] = static_cast<scalar_t>(mix(up[oj], read_f32(nrow + oj * nsw), k));
    }
  }
}

at::Tensor upsample_mix_cpu(const at::Tensor& latents, const at::Tensor& noise, double sigma, int64_t factor,
                            bool bilinear) {
  check_upsample(latents, noise, factor);
  const int64_t B = latents.size(0), C = latents.size(1), T = latents.size(2);
  const int64_t H = latents.size(3), W = latents.size(4);
  const int64_t Ho = H * factor, Wo = W * factor;
  at::Tensor out = latents.new_empty({B, C, T, Ho, Wo});  // contiguous, same dtype and device
  if (out.numel() == 0) return out;

  const UpsampleGeom g{strides_of(latents), strides_of(noise), C, T, H, Ho, Wo};
  const MixCoeffs k = mix_coeffs(sigma, factor);
  const bool unit_w = g.lat.w == 1 && g.noise.w == 1;
  const int64_t rows = B * C * T * Ho;

  // Column taps are the same for every row: compute them once.
  std::vector<int64_t> col_src;
  std::vector<LinearTap> col_tap;
  if (bilinear) {
    col_tap.resize(Wo);
    for (int64_t oj = 0; oj < Wo; ++oj) col_tap[oj] = linear_tap(oj, W, Wo, k.ratio);
  } else {
    col_src.resize(Wo);
    for (int64_t oj = 0; oj < Wo; ++oj) col_src[oj] = nearest_source(oj, W, k.ratio);
  }

  SURF_ACCEL_DISPATCH_LATENT_TYPES(latents.scalar_type(), "upsample_mix_cpu", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* l = latents.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(Wo * (bilinear ? 4 : 1)), [&](int64_t begin, int64_t end) {
      if (bilinear) {
        unit_w ? bilinear_rows<true>(o, l, z, g, k, col_tap.data(), begin, end)
               : bilinear_rows<false>(o, l, z, g, k, col_tap.data(), begin, end);
      } else {
        unit_w ? nearest_rows<true>(o, l, z, g, k, col_src.data(), begin, end)
               : nearest_rows<false>(o, l, z, g, k, col_src.data(), begin, end);
      }
    });
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// guided_step

// n contiguous elements: Vectorized fp32 math over the span, scalar tail (same operations).
template <bool kUncond, typename scalar_t>
void guided_span(scalar_t* o, const scalar_t* l, const scalar_t* vc, const scalar_t* vu, int64_t n,
                 const GuideCoeffs& k) {
  using Vec = at::vec::Vectorized<scalar_t>;
  using fVec = at::vec::Vectorized<float>;
  const fVec g(k.g), dt(k.dt);
  auto step = [&](const fVec& x, const fVec& c, const fVec& u) {
    if constexpr (kUncond) {
      return x + dt * (u + g * (c - u));
    } else {
      return x + dt * c;
    }
  };
  int64_t i = 0;
  if constexpr (std::is_same_v<scalar_t, float>) {
    for (; i + Vec::size() <= n; i += Vec::size()) {
      const fVec u = kUncond ? fVec::loadu(vu + i) : fVec(0.0f);
      step(fVec::loadu(l + i), fVec::loadu(vc + i), u).store(o + i);
    }
  } else {
    for (; i + Vec::size() <= n; i += Vec::size()) {
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(l + i));
      auto [c0, c1] = at::vec::convert_to_float<scalar_t>(Vec::loadu(vc + i));
      fVec u0(0.0f), u1(0.0f);
      if constexpr (kUncond) {
        std::tie(u0, u1) = at::vec::convert_to_float<scalar_t>(Vec::loadu(vu + i));
      }
      at::vec::convert_from_float<scalar_t>(step(x0, c0, u0), step(x1, c1, u1)).store(o + i);
    }
  }
  for (; i < n; ++i) {
    o[i] = static_cast<scalar_t>(kUncond ? guided_value(read_f32(l + i), read_f32(vc + i), read_f32(vu + i), k)
                                         : guided_value(read_f32(l + i), read_f32(vc + i), k));
  }
}

template <bool kUncond, typename scalar_t>
void guided_rows_strided(scalar_t* out, const scalar_t* l, const scalar_t* vc, const scalar_t* vu,
                         const Strides5& sl, const Strides5& sc, const Strides5& su, int64_t C, int64_t T,
                         int64_t H, int64_t W, const GuideCoeffs& k, int64_t begin, int64_t end) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t n = r / H, h = r % H;
    const scalar_t* lrow = l + plane_offset(n, C, T, sl) + h * sl.h;
    const scalar_t* crow = vc + plane_offset(n, C, T, sc) + h * sc.h;
    const scalar_t* urow = kUncond ? vu + plane_offset(n, C, T, su) + h * su.h : nullptr;
    scalar_t* orow = out + r * W;
    if (sl.w == 1 && sc.w == 1 && (!kUncond || su.w == 1)) {
      guided_span<kUncond>(orow, lrow, crow, urow, W, k);
      continue;
    }
    for (int64_t w = 0; w < W; ++w) {
      orow[w] = static_cast<scalar_t>(
          kUncond ? guided_value(read_f32(lrow + w * sl.w), read_f32(crow + w * sc.w), read_f32(urow + w * su.w), k)
                  : guided_value(read_f32(lrow + w * sl.w), read_f32(crow + w * sc.w), k));
    }
  }
}

template <bool kUncond, typename scalar_t>
void guided_impl(at::Tensor& out, const at::Tensor& latents, const at::Tensor& v_cond, const at::Tensor* v_uncond,
                 const GuideCoeffs& k) {
  scalar_t* o = out.data_ptr<scalar_t>();
  const scalar_t* l = latents.const_data_ptr<scalar_t>();
  const scalar_t* c = v_cond.const_data_ptr<scalar_t>();
  const scalar_t* u = kUncond ? v_uncond->const_data_ptr<scalar_t>() : nullptr;
  const bool contiguous = latents.is_contiguous() && v_cond.is_contiguous() && (!kUncond || v_uncond->is_contiguous());
  if (contiguous) {
    at::parallel_for(0, out.numel(), kGrain, [&](int64_t begin, int64_t end) {
      guided_span<kUncond>(o + begin, l + begin, c + begin, kUncond ? u + begin : nullptr, end - begin, k);
    });
    return;
  }
  const int64_t C = latents.size(1), T = latents.size(2), H = latents.size(3), W = latents.size(4);
  const Strides5 sl = strides_of(latents), sc = strides_of(v_cond);
  const Strides5 su = kUncond ? strides_of(*v_uncond) : Strides5{0, 0, 0, 0, 0};
  const int64_t rows = latents.size(0) * C * T * H;
  at::parallel_for(0, rows, row_grain(W), [&](int64_t begin, int64_t end) {
    guided_rows_strided<kUncond>(o, l, c, u, sl, sc, su, C, T, H, W, k, begin, end);
  });
}

at::Tensor guided_step_cpu(const at::Tensor& latents, const at::Tensor& v_cond,
                           const std::optional<at::Tensor>& v_uncond, double guidance_scale, double sigma,
                           double sigma_next) {
  check_guided(latents, v_cond, v_uncond);
  at::Tensor out = latents.new_empty(latents.sizes());  // contiguous
  if (out.numel() == 0) return out;
  const GuideCoeffs k = guide_coeffs(guidance_scale, sigma, sigma_next);
  SURF_ACCEL_DISPATCH_LATENT_TYPES(latents.scalar_type(), "guided_step_cpu", [&] {
    if (v_uncond.has_value()) {
      guided_impl<true, scalar_t>(out, latents, v_cond, &*v_uncond, k);
    } else {
      guided_impl<false, scalar_t>(out, latents, v_cond, nullptr, k);
    }
  });
  return out;
}

}  // namespace
}  // namespace surf_accel

TORCH_LIBRARY_IMPL(surf_accel, CPU, m) {
  m.impl("reshift_downsample", &surf_accel::reshift_downsample_cpu);
  m.impl("upsample_mix", &surf_accel::upsample_mix_cpu);
  m.impl("guided_step", &surf_accel::guided_step_cpu);
}
