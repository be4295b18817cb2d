#!/usr/bin/env bash
# CI check of the CMake build (docs/design.md 8): configure and build CMakeLists.txt for CPU against the
# installed torch into build/cmake, then, in a fresh Python process (so surf_accel's own
# extension is not loaded too), load the library with torch.ops.load_library, check that it
# registers CPU kernels for the compiled ops, and run them against the PyTorch references.
#
# Environment: PYTHON (default: python), BUILD_DIR (default: build/cmake), CMAKE_ARGS (extra
# configure arguments), CMAKE_BUILD_PARALLEL_LEVEL (build jobs).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
BUILD_DIR=${BUILD_DIR:-build/cmake}
prefix=$("$PYTHON" -c 'import torch; print(torch.utils.cmake_prefix_path)')

generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi
# A cache made with another generator cannot be reused.
if [ -f "$BUILD_DIR/CMakeCache.txt" ] && [ ${#generator[@]} -gt 0 ] && ! grep -q "CMAKE_GENERATOR:INTERNAL=Ninja" "$BUILD_DIR/CMakeCache.txt"; then
  rm -rf "$BUILD_DIR"
fi

echo "== configure ($BUILD_DIR, torch from $prefix)"
# shellcheck disable=SC2086
cmake -S . -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DSURF_ACCEL_CUDA=OFF ${CMAKE_ARGS:-}
echo "== build"
cmake --build "$BUILD_DIR"

lib="$BUILD_DIR/libsurf_accel.so"
[ -f "$lib" ] || { echo "check_cmake_build: $lib was not built" >&2; exit 1; }

echo "== load $lib in a fresh process"
"$PYTHON" - "$lib" <<'EOF'
import importlib.util
import sys

import torch

lib = sys.argv[1]
torch.ops.load_library(lib)

OPS = ("reshift_downsample", "upsample_mix", "guided_step")
missing = [n for n in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"surf_accel::{n}", "CPU")]
if missing:
    sys.exit(f"check_cmake_build: {lib} registers no CPU kernel for {missing}")

# The references, loaded by path: importing the surf_accel package would load its own extension,
# whose registrations clash with this library's.
spec = importlib.util.spec_from_file_location("surf_reference", "surf_accel/ops/reference.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)

ops = torch.ops.surf_accel
g = torch.Generator().manual_seed(0)
problems = []


def compare(name, got, want):
    if got.dtype != want.dtype or got.shape != want.shape or not got.is_contiguous():
        problems.append(f"{name}: got {got.dtype} {tuple(got.shape)}, want {want.dtype} {tuple(want.shape)}")
    elif not torch.allclose(got.float(), want.float(), rtol=1e-2 if got.dtype != torch.float32 else 1e-5, atol=1e-5):
        problems.append(f"{name}: max abs difference {(got.float() - want.float()).abs().max().item():.3g}")


for dtype in (torch.float32, torch.bfloat16):
    x = torch.randn(2, 3, 2, 6, 10, generator=g).to(dtype)
    v = torch.randn(2, 3, 2, 6, 10, generator=g).to(dtype)
    u = torch.randn(2, 3, 2, 6, 10, generator=g).to(dtype).transpose(3, 4).contiguous().transpose(3, 4)
    small = torch.randn(2, 3, 2, 3, 5, generator=g).to(dtype)
    big = torch.randn(2, 3, 2, 12, 20, generator=g).to(dtype)
    for paper in (False, True):
        compare(f"reshift_downsample {dtype} paper={paper}",
                ops.reshift_downsample(x, v, small, 0.7, 0.4, 2, paper),
                ref.reshift_downsample(x, v, small, 0.7, 0.4, 2, "paper" if paper else "consistent"))
    for bilinear in (False, True):
        compare(f"upsample_mix {dtype} bilinear={bilinear}",
                ops.upsample_mix(x, big, 0.6, 2, bilinear),
                ref.upsample_mix(x, big, 0.6, 2, "bilinear" if bilinear else "nearest"))
    compare(f"guided_step {dtype}", ops.guided_step(x, v, u, 5.0, 0.8, 0.7), ref.guided_step(x, v, u, 5.0, 0.8, 0.7))
    compare(f"guided_step {dtype} no uncond", ops.guided_step(x, v, None, 5.0, 0.8, 0.7),
            ref.guided_step(x, v, None, 5.0, 0.8, 0.7))

if problems:
    sys.exit("check_cmake_build: the CMake build disagrees with the references:\n  " + "\n  ".join(problems))
print(f"check_cmake_build: ok: {lib} registers {', '.join(OPS)} (CPU) and matches the references")
EOF
