// Index arithmetic of shifted-window attention (docs/design.md 3.2), shared by the CPU and CUDA pack/unpack
// kernels (csrc/cpu/window_partition.cpp, csrc/cuda/window_partition.cu).
//
// Video tokens sit on a (T, H, W) grid flattened t-major. Along an axis of length L with window w and
// shift s, a token's window index is (i + s) / w; window a spans [max(0, a*w - s), min(L, (a+1)*w - s)).
// A window >= L covers the whole axis (one window, shift 0).
//
// Packed order: windows in lexicographic (t, h, w) window-index order, the tokens of each window
// t-major. All windows with temporal index a then form one contiguous slab of len_t(a) * H * W
// positions starting at start_t(a) * H * W; inside it the windows with height index b form a slab
// starting at len_t(a) * start_h(b) * W, and so on. So a packed position maps back to its token in
// O(1), with no table: the kernels need nothing but the grid, window and shift.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SURF_WINDOW_HD __host__ __device__ __forceinline__
#else
#define SURF_WINDOW_HD inline
#endif

namespace surf_accel::window {

struct Axis {
  int64_t len;
  int64_t win;
  int64_t shift;
  int64_t count;  // number of windows along the axis
};

SURF_WINDOW_HD Axis make_axis(int64_t len, int64_t win, int64_t shift) {
  if (win >= len) return Axis{len, len, 0, 1};
  return Axis{len, win, shift, (len - 1 + shift) / win + 1};
}

SURF_WINDOW_HD int64_t window_of(const Axis& a, int64_t i) { return (i + a.shift) / a.win; }

SURF_WINDOW_HD int64_t segment_start(const Axis& a, int64_t k) {
  const int64_t s = k * a.win - a.shift;
  return s < 0 ? 0 : s;
}

SURF_WINDOW_HD int64_t segment_end(const Axis& a, int64_t k) {
  const int64_t e = (k + 1) * a.win - a.shift;
  return e > a.len ? a.len : e;
}

struct Grid {
  Axis t, h, w;
  SURF_WINDOW_HD int64_t tokens() const { return t.len * h.len * w.len; }
};

SURF_WINDOW_HD Grid make_grid(const int64_t* grid, const int64_t* window, const int64_t* shift) {
  return Grid{make_axis(grid[0], window[0], shift[0]), make_axis(grid[1], window[1], shift[1]),
              make_axis(grid[2], window[2], shift[2])};
}

// The t-major token index of packed position p (0 <= p < T*H*W).
SURF_WINDOW_HD int64_t packed_to_token(const Grid& g, int64_t p) {
  const int64_t H = g.h.len, W = g.w.len;
  const int64_t a = window_of(g.t, p / (H * W));
  const int64_t t0 = segment_start(g.t, a), lt = segment_end(g.t, a) - t0;
  int64_t r = p - t0 * H * W;  // inside the temporal slab: lt * H * W positions
  const int64_t b = window_of(g.h, r / (lt * W));
  const int64_t h0 = segment_start(g.h, b), lh = segment_end(g.h, b) - h0;
  r -= lt * h0 * W;  // inside the (a, b) slab: lt * lh * W positions
  const int64_t c = window_of(g.w, r / (lt * lh));
  const int64_t w0 = segment_start(g.w, c), lw = segment_end(g.w, c) - w0;
  r -= lt * lh * w0;  // inside window (a, b, c): lt * lh * lw positions, t-major
  const int64_t dt = r / (lh * lw), dh = (r / lw) % lh, dw = r % lw;
  return ((t0 + dt) * H + (h0 + dh)) * W + (w0 + dw);
}

}  // namespace surf_accel::window
