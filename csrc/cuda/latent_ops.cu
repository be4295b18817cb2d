// CUDA kernels of the fused latent ops (docs/design.md 3.1): reshift_downsample, upsample_mix, guided_step.
//
// Memory-bound: each kernel reads every input element once and writes each output element once.
// One thread per output element. The grid is 2-D: y walks the (B*C*T) planes, x the elements of
// a plane, both grid-stride, so the (b, c, t) plane offsets of strided inputs are computed once
// per plane and only one 32-bit division per element recovers (row, column). guided_step on
// contiguous, 16-byte aligned inputs uses 128-bit loads and stores instead.
// The per-element math is csrc/latent_index.h, shared with the CPU kernels: same operations, same
// order, IEEE-rounded intrinsics (no FMA contraction, exact division even under --use_fast_math).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>

#include "latent_index.h"

namespace surf_accel {
namespace {

using namespace surf_accel::latent;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksX = 1024;   // per plane (grid-stride beyond)
constexpr int64_t kMaxBlocksY = 65535;  // hardware limit of gridDim.y (grid-stride beyond)
constexpr int64_t kMaxBlocks1D = 8192;  // flat kernels (grid-stride beyond)

dim3 plane_grid(int64_t planes, int64_t plane_elems) {
  const int64_t bx = std::min<int64_t>((plane_elems + kThreads - 1) / kThreads, kMaxBlocksX);
  const int64_t by = std::min<int64_t>(planes, kMaxBlocksY);
  return dim3(static_cast<unsigned>(std::max<int64_t>(bx, 1)), static_cast<unsigned>(std::max<int64_t>(by, 1)));
}

void check_plane_size(const char* op, int64_t plane_elems) {
  TORCH_CHECK(plane_elems <= std::numeric_limits<int32_t>::max(), op, ": an H x W plane of ", plane_elems,
              " elements is too large (the kernels index a plane with 32 bits)");
}

// Element e of a plane with `cols` columns -> (row, column), e < 2^31.
__device__ __forceinline__ void row_col(int64_t e, uint32_t cols, int64_t& row, int64_t& col) {
  const uint32_t eu = static_cast<uint32_t>(e);
  const uint32_t r = eu / cols;
  row = r;
  col = eu - r * cols;
}

#define SURF_PLANE_LOOP(planes)                                                      \
  for (int64_t n = blockIdx.y; n < (planes); n += gridDim.y)
#define SURF_ELEM_LOOP(e, count)                                                                     \
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < (count);         \
       e += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ------------------------------------------------------------------------------------------------
// reshift_downsample

struct ReshiftGeom {
  Strides5 lat, mo, noise;
  int64_t planes, C, T, Ho, Wo, f;
};

template <int kF, typename T>
__global__ void __launch_bounds__(kThreads)
    reshift_kernel(T* __restrict__ out, const T* __restrict__ lat, const T* __restrict__ mo,
                   const T* __restrict__ noise, const ReshiftGeom g, const ReshiftCoeffs k) {
  const int64_t F = kF > 0 ? kF : g.f;
  const int64_t plane_elems = g.Ho * g.Wo;
  SURF_PLANE_LOOP(g.planes) {
    const T* lp = lat + plane_offset(n, g.C, g.T, g.lat);
    const T* mp = mo + plane_offset(n, g.C, g.T, g.mo);
    const T* np = noise + plane_offset(n, g.C, g.T, g.noise);
    T* op = out + n * plane_elems;
    SURF_ELEM_LOOP(e, plane_elems) {
      int64_t i, j;
      row_col(e, static_cast<uint32_t>(g.Wo), i, j);
      const float z = read_f32(np + i * g.noise.h + j * g.noise.w);
      op[e] = static_cast<T>(reshift_value<kF>(lp + i * F * g.lat.h + j * F * g.lat.w, g.lat.h, g.lat.w,
                                               mp + i * F * g.mo.h + j * F * g.mo.w, g.mo.h, g.mo.w, z, k, F));
    }
  }
}

at::Tensor reshift_downsample_cuda(const at::Tensor& latents, const at::Tensor& model_output,
                                   const at::Tensor& noise, double sigma, double sigma_new, int64_t factor,
                                   bool paper) {
  check_reshift(latents, model_output, noise, factor);
  const c10::cuda::CUDAGuard guard(latents.device());
  const int64_t B = latents.size(0), C = latents.size(1), T = latents.size(2);
  const int64_t Ho = latents.size(3) / factor, Wo = latents.size(4) / factor;
  at::Tensor out = latents.new_empty({B, C, T, Ho, Wo});  // contiguous, same dtype and device
  if (out.numel() == 0) return out;
  check_plane_size("surf_accel::reshift_downsample", Ho * Wo);

  const ReshiftGeom g{strides_of(latents), strides_of(model_output), strides_of(noise), B * C * T, C, T, Ho, Wo,
                      factor};
  const ReshiftCoeffs k = reshift_coeffs(sigma, sigma_new, factor, paper);
  const dim3 grid = plane_grid(g.planes, Ho * Wo);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SURF_ACCEL_DISPATCH_LATENT_TYPES(latents.scalar_type(), "reshift_downsample_cuda", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* l = latents.const_data_ptr<scalar_t>();
    const scalar_t* m = model_output.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    if (factor == 2) {
      reshift_kernel<2, scalar_t><<<grid, kThreads, 0, stream>>>(o, l, m, z, g, k);
    } else {
      reshift_kernel<0, scalar_t><<<grid, kThreads, 0, stream>>>(o, l, m, z, g, k);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// upsample_mix

struct UpsampleGeom {
  Strides5 lat, noise;
  int64_t planes, C, T, H, W, Ho, Wo;
};

template <bool kBilinear, typename T>
__global__ void __launch_bounds__(kThreads)
    upsample_kernel(T* __restrict__ out, const T* __restrict__ lat, const T* __restrict__ noise,
                    const UpsampleGeom g, const MixCoeffs k) {
  const int64_t plane_elems = g.Ho * g.Wo;
  SURF_PLANE_LOOP(g.planes) {
    const T* lp = lat + plane_offset(n, g.C, g.T, g.lat);
    const T* np = noise + plane_offset(n, g.C, g.T, g.noise);
    T* op = out + n * plane_elems;
    SURF_ELEM_LOOP(e, plane_elems) {
      int64_t i, j;
      row_col(e, static_cast<uint32_t>(g.Wo), i, j);
      float up;
      if constexpr (kBilinear) {
        const LinearTap h = linear_tap(i, g.H, g.Ho, k.ratio);
        const LinearTap w = linear_tap(j, g.W, g.Wo, k.ratio);
        up = lerp_rows(lerp_row(lp + h.i0 * g.lat.h, g.lat.w, w), lerp_row(lp + h.i1 * g.lat.h, g.lat.w, w), h);
      } else {
        up = read_f32(lp + nearest_source(i, g.H, k.ratio) * g.lat.h + nearest_source(j, g.W, k.ratio) * g.lat.w);
      }
      op[e] = static_cast<T>(mix(up, read_f32(np + i * g.noise.h + j * g.noise.w), k));
    }
  }
}

at::Tensor upsample_mix_cuda(const at::Tensor& latents, const at::Tensor& noise, double sigma, int64_t factor,
                             bool bilinear) {
  check_upsample(latents, noise, factor);
  const c10::cuda::CUDAGuard guard(latents.device());
  const int64_t B = latents.size(0), C = latents.size(1), T = latents.size(2);
  const int64_t H = latents.size(3), W = latents.size(4);
  const int64_t Ho = H * factor, Wo = W * factor;
  at::Tensor out = latents.new_empty({B, C, T, Ho, Wo});  // contiguous, same dtype and device
  if (out.numel() == 0) return out;
  check_plane_size("surf_accel::upsample_mix", Ho * Wo);

  const UpsampleGeom g{strides_of(latents), strides_of(noise), B * C * T, C, T, H, W, Ho, Wo};
  const MixCoeffs k = mix_coeffs(sigma, factor);
  const dim3 grid = plane_grid(g.planes, Ho * Wo);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SURF_ACCEL_DISPATCH_LATENT_TYPES(latents.scalar_type(), "upsample_mix_cuda", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    const scalar_t* l = latents.const_data_ptr<scalar_t>();
    const scalar_t* z = noise.const_data_ptr<scalar_t>();
    if (bilinear) {
      upsample_kernel<true, scalar_t><<<grid, kThreads, 0, stream>>>(o, l, z, g, k);
    } else {
      upsample_kernel<false, scalar_t><<<grid, kThreads, 0, stream>>>(o, l, z, g, k);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ------------------------------------------------------------------------------------------------
// guided_step

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <bool kUncond, typename T>
__device__ __forceinline__ T guided_elem(T l, T c, T u, const GuideCoeffs& k) {
  return static_cast<T>(kUncond ? guided_value(static_cast<float>(l), static_cast<float>(c), static_cast<float>(u), k)
                                : guided_value(static_cast<float>(l), static_cast<float>(c), k));
}

// Contiguous inputs, flat index. kVec elements per 128-bit access (1 when not aligned).
template <int kVec, bool kUncond, typename T>
__global__ void __launch_bounds__(kThreads)
    guided_flat_kernel(T* __restrict__ out, const T* __restrict__ l, const T* __restrict__ c,
                       const T* __restrict__ u, const int64_t numel, const GuideCoeffs k) {
  using P = Pack<T, kVec>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = numel / kVec;
  for (int64_t p = start; p < packs; p += stride) {
    const P lp = reinterpret_cast<const P*>(l)[p];
    const P cp = reinterpret_cast<const P*>(c)[p];
    P up;
    if constexpr (kUncond) up = reinterpret_cast<const P*>(u)[p];
    P op;
#pragma unroll
    for (int q = 0; q < kVec; ++q) {
      op.v[q] = guided_elem<kUncond>(lp.v[q], cp.v[q], kUncond ? up.v[q] : T(0), k);
    }
    reinterpret_cast<P*>(out)[p] = op;
  }
  for (int64_t i = packs * kVec + start; i < numel; i += stride) {
    out[i] = guided_elem<kUncond>(l[i], c[i], kUncond ? u[i] : T(0), k);
  }
}

struct GuidedGeom {
  Strides5 lat, vc, vu;
  int64_t planes, C, T, H, W;
};

// Any strides: planes x (H * W) elements; the output is contiguous.
template <bool kUncond, typename T>
__global__ void __launch_bounds__(kThreads)
    guided_strided_kernel(T* __restrict__ out, const T* __restrict__ l, const T* __restrict__ c,
                          const T* __restrict__ u, const GuidedGeom g, const GuideCoeffs k) {
  const int64_t plane_elems = g.H * g.W;
  SURF_PLANE_LOOP(g.planes) {
    const T* lp = l + plane_offset(n, g.C, g.T, g.lat);
    const T* cp = c + plane_offset(n, g.C, g.T, g.vc);
    const T* up = kUncond ? u + plane_offset(n, g.C, g.T, g.vu) : nullptr;
    T* op = out + n * plane_elems;
    SURF_ELEM_LOOP(e, plane_elems) {
      int64_t h, w;
      row_col(e, static_cast<uint32_t>(g.W), h, w);
      op[e] = guided_elem<kUncond>(lp[h * g.lat.h + w * g.lat.w], cp[h * g.vc.h + w * g.vc.w],
                                   kUncond ? up[h * g.vu.h + w * g.vu.w] : T(0), k);
    }
  }
}

bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <bool kUncond, typename scalar_t>
void guided_launch(at::Tensor& out, const at::Tensor& latents, const at::Tensor& v_cond, const at::Tensor* v_uncond,
                   const GuideCoeffs& k, cudaStream_t stream) {
  scalar_t* o = out.data_ptr<scalar_t>();
  const scalar_t* l = latents.const_data_ptr<scalar_t>();
  const scalar_t* c = v_cond.const_data_ptr<scalar_t>();
  const scalar_t* u = kUncond ? v_uncond->const_data_ptr<scalar_t>() : nullptr;
  const int64_t numel = out.numel();
  const bool contiguous = latents.is_contiguous() && v_cond.is_contiguous() && (!kUncond || v_uncond->is_contiguous());
  if (contiguous) {
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vec = aligned16(o) && aligned16(l) && aligned16(c) && (!kUncond || aligned16(u));
    const int64_t work = vec ? numel / kVec : numel;
    const unsigned blocks =
        static_cast<unsigned>(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, kMaxBlocks1D));
    if (vec) {
      guided_flat_kernel<kVec, kUncond, scalar_t><<<blocks, kThreads, 0, stream>>>(o, l, c, u, numel, k);
    } else {
      guided_flat_kernel<1, kUncond, scalar_t><<<blocks, kThreads, 0, stream>>>(o, l, c, u, numel, k);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t C = latents.size(1), T = latents.size(2), H = latents.size(3), W = latents.size(4);
  check_plane_size("surf_accel::guided_step", H * W);
  const GuidedGeom g{strides_of(latents), strides_of(v_cond), kUncond ? strides_of(*v_uncond) : Strides5{0, 0, 0, 0, 0},
                     latents.size(0) * C * T, C, T, H, W};
  guided_strided_kernel<kUncond, scalar_t><<<plane_grid(g.planes, H * W), kThreads, 0, stream>>>(o, l, c, u, g, k);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor guided_step_cuda(const at::Tensor& latents, const at::Tensor& v_cond,
                            const std::optional<at::Tensor>& v_uncond, double guidance_scale, double sigma,
                            double sigma_next) {
  check_guided(latents, v_cond, v_uncond);
  const c10::cuda::CUDAGuard guard(latents.device());
  at::Tensor out = latents.new_empty(latents.sizes());  // contiguous
  if (out.numel() == 0) return out;
  const GuideCoeffs k = guide_coeffs(guidance_scale, sigma, sigma_next);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SURF_ACCEL_DISPATCH_LATENT_TYPES(latents.scalar_type(), "guided_step_cuda", [&] {
    if (v_uncond.has_value()) {
      guided_launch<true, scalar_t>(out, latents, v_cond, &*v_uncond, k, stream);
    } else {
      guided_launch<false, scalar_t>(out, latents, v_cond, nullptr, k, stream);
    }
  });
  return out;
}

}  // namespace
}  // namespace surf_accel

TORCH_LIBRARY_IMPL(surf_accel, CUDA, m) {
  m.impl("reshift_downsample", &surf_accel::reshift_downsample_cuda);
  m.impl("upsample_mix", &surf_accel::upsample_mix_cuda);
  m.impl("guided_step", &surf_accel::guided_step_cuda);
}
