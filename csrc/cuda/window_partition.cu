// CUDA pack/unpack of shifted windows for flash-attn's varlen API (docs/design.md 3.2); CPU twin in
// csrc/cpu/window_partition.cpp, which also defines the schemas. One thread block per packed row
// (one token): it maps the row to its token with the O(1) arithmetic of csrc/window_index.h (no
// permutation table), then its threads copy the heads * D elements with the widest vector type
// that the row size, strides and base addresses allow (16 bytes for fp16/bf16 rows of D = 64, 128).
// Memory-bound: each element is read once and written once.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>

#include "window_index.h"

namespace surf_accel {
namespace {

using window::Grid;

constexpr int kThreads = 128;

// Strides in units of Vec. `token_side_is_src`: pack (token-indexed src -> packed dst) or unpack.
template <typename Vec>
__global__ void window_copy_kernel(const Vec* __restrict__ src, Vec* __restrict__ dst, Grid g, int64_t n,
                                   int64_t heads, int64_t vecs_per_head, int64_t tok_sb, int64_t tok_ss,
                                   int64_t tok_sh, bool token_side_is_src) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / n;
  const int64_t token = window::packed_to_token(g, row % n);
  const int64_t tok_base = b * tok_sb + token * tok_ss;
  const int64_t packed_base = row * heads * vecs_per_head;
  const int64_t total = heads * vecs_per_head;
  for (int64_t i = threadIdx.x; i < total; i += blockDim.x) {
    const int64_t h = i / vecs_per_head, d = i - h * vecs_per_head;
    const int64_t tok = tok_base + h * tok_sh + d;
    if (token_side_is_src) {
      dst[packed_base + i] = src[tok];
    } else {
      dst[tok] = src[packed_base + i];
    }
  }
}

Grid checked_grid(at::IntArrayRef grid, at::IntArrayRef win, at::IntArrayRef shift) {
  TORCH_CHECK(grid.size() == 3 && win.size() == 3 && shift.size() == 3,
              "window partition: grid, window and shift must have three entries (T, H, W)");
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(grid[i] >= 1 && win[i] >= 1, "window partition: grid and window entries must be >= 1");
    TORCH_CHECK(shift[i] >= 0 && shift[i] < win[i], "window partition: need 0 <= shift < window");
  }
  return window::make_grid(grid.data(), win.data(), shift.data());
}

// Launch with the widest vector width (bytes) dividing the row, the strides and both base addresses.
void launch_copy(const at::Tensor& token_tensor, const at::Tensor& packed, bool pack, const Grid& g) {
  const int64_t n = g.tokens();
  const int64_t B = token_tensor.size(0), heads = token_tensor.size(2), D = token_tensor.size(3);
  const int64_t es = token_tensor.element_size();
  const int64_t strides[3] = {token_tensor.stride(0) * es, token_tensor.stride(1) * es, token_tensor.stride(2) * es};
  const auto tok_addr = reinterpret_cast<std::uintptr_t>(token_tensor.const_data_ptr());
  const auto pk_addr = reinterpret_cast<std::uintptr_t>(packed.const_data_ptr());
  int64_t vec = 16;
  auto fits = [&](int64_t v) {
    if ((D * es) % v || tok_addr % v || pk_addr % v) return false;
    for (int64_t s : strides) if (s % v) return false;
    return true;
  };
  while (vec > 1 && !fits(vec)) vec /= 2;
  if (B * n == 0 || heads * D == 0) return;
  const dim3 blocks(static_cast<unsigned int>(B * n));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t vph = D * es / vec;
  auto run = [&](auto* tag) {
    using Vec = std::remove_pointer_t<decltype(tag)>;
    const Vec* src = static_cast<const Vec*>(pack ? token_tensor.const_data_ptr() : packed.const_data_ptr());
    Vec* dst = static_cast<Vec*>(pack ? packed.data_ptr() : token_tensor.data_ptr());
    window_copy_kernel<Vec><<<blocks, kThreads, 0, stream>>>(src, dst, g, n, heads, vph, strides[0] / vec,
                                                                strides[1] / vec, strides[2] / vec, pack);
  };
  switch (vec) {
    case 16: run(static_cast<uint4*>(nullptr)); break;
    case 8: run(static_cast<uint2*>(nullptr)); break;
    case 4: run(static_cast<uint32_t*>(nullptr)); break;
    case 2: run(static_cast<uint16_t*>(nullptr)); break;
    default: run(static_cast<uint8_t*>(nullptr)); break;
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor window_pack_cuda(const at::Tensor& x_in, at::IntArrayRef grid, at::IntArrayRef win, at::IntArrayRef shift) {
  TORCH_CHECK(x_in.dim() == 4, "window_pack: x must be (B, S, heads, D), got ", x_in.sizes());
  const Grid g = checked_grid(grid, win, shift);
  const int64_t n = g.tokens();
  TORCH_CHECK(x_in.size(1) >= n, "window_pack: sequence ", x_in.size(1), " shorter than the grid's ", n, " tokens");
  TORCH_CHECK(n <= INT32_MAX && x_in.size(0) * n <= INT32_MAX, "window_pack: too many tokens for one launch");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  at::Tensor out = at::empty({x.size(0) * n, x.size(2), x.size(3)}, x.options());
  launch_copy(x, out, /*pack=*/true, g);
  return out;
}

at::Tensor window_unpack_cuda(const at::Tensor& packed_in, at::IntArrayRef grid, at::IntArrayRef win,
                              at::IntArrayRef shift, int64_t batch) {
  TORCH_CHECK(packed_in.dim() == 3, "window_unpack: packed must be (B*N, heads, D), got ", packed_in.sizes());
  const Grid g = checked_grid(grid, win, shift);
  const int64_t n = g.tokens();
  TORCH_CHECK(batch >= 1 && packed_in.size(0) == batch * n, "window_unpack: packed has ", packed_in.size(0),
              " rows, expected batch * T*H*W = ", batch * n);
  TORCH_CHECK(batch * n <= INT32_MAX, "window_unpack: too many tokens for one launch");
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty({batch, n, packed.size(1), packed.size(2)}, packed.options());
  launch_copy(out, packed, /*pack=*/false, g);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(surf_accel, CUDA, m) {
  m.impl("window_pack", &window_pack_cuda);
  m.impl("window_unpack", &window_unpack_cuda);
}

}  // namespace surf_accel
