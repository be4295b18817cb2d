// Shifted-window partition for the varlen attention path (docs/design.md 3.2): window_pack gathers the video
// tokens of q/k/v (B, S, heads, D) into window-contiguous order (B*N, heads, D) (N = T*H*W; text
// tokens after the grid are ignored), window_unpack scatters a packed attention output back to
// (B, N, heads, D). CPU twin of csrc/cuda/window_partition.cu; the index arithmetic is shared in
// csrc/window_index.h. The schemas are defined here (this file is always built); fake kernels are
// registered from Python (surf_accel/ops/window_attention.py).
//
// Rows are moved as bytes (the op is dtype-agnostic); the source is read through its strides, so
// non-contiguous q/k/v views (e.g. slices of a fused QKV projection) are packed without a copy.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <array>
#include <cstring>

#include "window_index.h"

namespace surf_accel {
namespace {

using window::Grid;

// Elements moved per parallel task, about torch's default grain.
constexpr int64_t kGrainBytes = 32768;

Grid checked_grid(at::IntArrayRef grid, at::IntArrayRef win, at::IntArrayRef shift) {
  TORCH_CHECK(grid.size() == 3 && win.size() == 3 && shift.size() == 3,
              "window partition: grid, window and shift must have three entries (T, H, W)");
  for (int i = 0; i < 3; ++i) {
    TORCH_CHECK(grid[i] >= 1 && win[i] >= 1, "window partition: grid and window entries must be >= 1");
    TORCH_CHECK(shift[i] >= 0 && shift[i] < win[i], "window partition: need 0 <= shift < window");
  }
  return window::make_grid(grid.data(), win.data(), shift.data());
}

// Copy one (heads * D) token row between a token-indexed and a packed tensor, both (.., heads, D)
// with unit D stride; strides in elements.
inline void copy_heads(const char* src, int64_t src_sh, char* dst, int64_t dst_sh, int64_t heads,
                       int64_t row_bytes, int64_t esize) {
  for (int64_t h = 0; h < heads; ++h) {
    std::memcpy(dst + h * dst_sh * esize, src + h * src_sh * esize, row_bytes);
  }
}

at::Tensor window_pack_cpu(const at::Tensor& x_in, at::IntArrayRef grid, at::IntArrayRef win, at::IntArrayRef shift) {
  TORCH_CHECK(x_in.dim() == 4, "window_pack: x must be (B, S, heads, D), got ", x_in.sizes());
  const Grid g = checked_grid(grid, win, shift);
  const int64_t n = g.tokens();
  TORCH_CHECK(x_in.size(1) >= n, "window_pack: sequence ", x_in.size(1), " shorter than the grid's ", n, " tokens");
  const at::Tensor x = x_in.stride(3) == 1 ? x_in : x_in.contiguous();
  const int64_t B = x.size(0), heads = x.size(2), D = x.size(3), esize = x.element_size();
  at::Tensor out = at::empty({B * n, heads, D}, x.options());
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  const int64_t sb = x.stride(0), ss = x.stride(1), sh = x.stride(2);
  at::parallel_for(0, B * n, std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, heads * D)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n, token = window::packed_to_token(g, row % n);
      copy_heads(src + (b * sb + token * ss) * esize, sh, dst + row * heads * D * esize, D, heads, D * esize, esize);
    }
  });
  return out;
}

at::Tensor window_unpack_cpu(const at::Tensor& packed_in, at::IntArrayRef grid, at::IntArrayRef win,
                             at::IntArrayRef shift, int64_t batch) {
  TORCH_CHECK(packed_in.dim() == 3, "window_unpack: packed must be (B*N, heads, D), got ", packed_in.sizes());
  const Grid g = checked_grid(grid, win, shift);
  const int64_t n = g.tokens();
  TORCH_CHECK(batch >= 1 && packed_in.size(0) == batch * n, "window_unpack: packed has ", packed_in.size(0),
              " rows, expected batch * T*H*W = ", batch * n);
  const at::Tensor packed = packed_in.contiguous();
  const int64_t heads = packed.size(1), D = packed.size(2), esize = packed.element_size();
  at::Tensor out = at::empty({batch, n, heads, D}, packed.options());
  const char* src = static_cast<const char*>(packed.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  at::parallel_for(0, batch * n, std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, heads * D)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / n, token = window::packed_to_token(g, row % n);
      copy_heads(src + row * heads * D * esize, D, dst + (b * n + token) * heads * D * esize, D, heads, D * esize, esize);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(surf_accel, m) {
  m.def("window_pack(Tensor x, int[] grid, int[] window, int[] shift) -> Tensor");
  m.def("window_unpack(Tensor packed, int[] grid, int[] window, int[] shift, int batch) -> Tensor");
}

TORCH_LIBRARY_IMPL(surf_accel, CPU, m) {
  m.impl("window_pack", &window_pack_cpu);
  m.impl("window_unpack", &window_unpack_cpu);
}

}  // namespace surf_accel
