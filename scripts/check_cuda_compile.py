#!/usr/bin/env python
"""Compile-only check of every CUDA source under csrc/ (docs/design.md 8: the CI check for CUDA code).

There is no GPU and no CUDA build of torch on the developer and CI machines, so the CUDA kernels
cannot be built into the extension there; this compiles each ``csrc/**/*.cu`` with nvcc against
the installed torch's headers, for sm_80 and sm_90a, with the flags the real extension build uses,
and throws the objects away. Files are compiled one after the other; both architectures go through
one nvcc call per file (one host compile, the two device passes in parallel with --threads); when
that call fails, each architecture is retried alone so the report says which one broke.

Usage: python scripts/check_cuda_compile.py [FILE.cu ...] [--nvcc PATH] [--threads N] [--verbose]
Prints one line per file and architecture; exits 1 if any compile fails, 2 if nvcc is missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# (label, -gencode argument)
ARCHS = (
    ("sm_80", "-gencode=arch=compute_80,code=sm_80"),
    ("sm_90a", "-gencode=arch=compute_90a,code=sm_90a"),
)

# What torch.utils.cpp_extension.CUDAExtension passes to nvcc (COMMON_NVCC_FLAGS), plus setup.py's
# own nvcc flags, so this check sees the same preprocessor world as the real build.
FALLBACK_COMMON_NVCC_FLAGS = [
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
    "--expt-relaxed-constexpr",
]
SETUP_NVCC_FLAGS = ["-O3", "-std=c++20", "--use_fast_math"]


def cuda_sources(paths: list[str]) -> list[Path]:
    if paths:
        return [Path(p).resolve() for p in paths]
    return sorted(CSRC.rglob("*.cu"))


def base_command(nvcc: str) -> list[str]:
    import torch
    from torch.utils import cpp_extension

    common = list(getattr(cpp_extension, "COMMON_NVCC_FLAGS", FALLBACK_COMMON_NVCC_FLAGS))
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"], str(CSRC)]
    return [
        nvcc,
        *SETUP_NVCC_FLAGS,
        "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-DTORCH_API_INCLUDE_EXTENSION_H",
        "-DTORCH_EXTENSION_NAME=_C",
        *common,
        "-Xcompiler",
        "-fPIC",
        *(f"-I{p}" for p in includes),
    ]


def compile_once(cmd: list[str], src: Path, gencodes: list[str], out_dir: str) -> tuple[bool, float, str]:
    obj = os.path.join(out_dir, src.stem + ".o")
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *gencodes, "-c", str(src), "-o", obj], capture_output=True, text=True, cwd=ROOT)
    return proc.returncode == 0, time.perf_counter() - start, (proc.stdout + proc.stderr).strip()


def indent(log: str, last: int = 60) -> str:
    return "\n".join("    " + line for line in log.splitlines()[-last:])


def rel(p: Path) -> str:
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="CUDA sources to check (default: every csrc/**/*.cu)")
    parser.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"), help="nvcc to use (default: $NVCC or nvcc)")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4),
                        help="nvcc --threads: compile steps of one file (e.g. the two archs) run in parallel "
                        "(default: min(CPUs, 4))")
    parser.add_argument("--verbose", action="store_true", help="print nvcc's output for passing files too")
    args = parser.parse_args(argv)

    nvcc = shutil.which(args.nvcc)
    if nvcc is None:
        print(f"check_cuda_compile: nvcc not found ({args.nvcc!r}); put the CUDA toolkit on the PATH", file=sys.stderr)
        return 2
    sources = cuda_sources(args.files)
    if not sources:
        print(f"check_cuda_compile: no .cu files under {rel(CSRC)}")
        return 0
    cmd = [*base_command(nvcc), f"--threads={max(args.threads, 1)}"]
    failures = 0
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="surf_accel_nvcc_") as out_dir:
        for src in sources:
            ok, secs, log = compile_once(cmd, src, [g for _, g in ARCHS], out_dir)
            if ok:
                for label, _ in ARCHS:
                    print(f"ok    {label:<7} {rel(src)}  ({secs:.1f} s, all archs in one nvcc call)")
                if args.verbose and log:
                    print(log)
                continue
            # Attribute the failure: retry each architecture on its own.
            arch_failures = 0
            for label, gencode in ARCHS:
                ok1, secs1, log1 = compile_once(cmd, src, [gencode], out_dir)
                print(f"{'ok' if ok1 else 'FAIL':<5} {label:<7} {rel(src)}  ({secs1:.1f} s)")
                if not ok1:
                    arch_failures += 1
                    print(indent(log1))
            if arch_failures == 0:  # only the multi-arch call fails
                arch_failures = 1
                print(f"FAIL  all     {rel(src)}  (fails with all archs in one call, passes per arch)")
                print(indent(log))
            failures += arch_failures
    elapsed = time.perf_counter() - total
    print(f"check_cuda_compile: {len(sources)} file(s) x {len(ARCHS)} archs, {failures} failure(s), {elapsed:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
