"""Builds surf_accel._C: the C++ CPU kernels always, the CUDA kernels when the installed torch has
CUDA. Needs torch at build time: install with ``pip install --no-build-isolation .``.

Environment: ``TORCH_CUDA_ARCH_LIST`` (default "8.0;9.0a"), ``MAX_JOBS`` (honoured by torch's
ninja build), ``SURF_ACCEL_FORCE_CUDA=1`` (fail instead of building CPU-only).
"""

import glob
import os

from setuptools import setup

try:
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as exc:  # pragma: no cover - build-time guidance
    raise SystemExit(
        "surf_accel builds C++ extensions against the installed torch: install torch first "
        "(pip install torch==2.13.0), then pip install --no-build-isolation ."
    ) from exc

HERE = os.path.dirname(os.path.abspath(__file__))
cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
# -ffp-contract=off: GCC would otherwise fuse a*b+c into FMAs where the target has them, so
# results would depend on the build flags rather than match the reference roundings.
cxx_flags = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off"]

if torch.version.cuda is not None:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    ext = CUDAExtension(
        "surf_accel._C",
        cpp_sources + cuda_sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "--use_fast_math"]},
        extra_link_args=["-fopenmp"],
    )
else:
    if os.environ.get("SURF_ACCEL_FORCE_CUDA") == "1":
        raise SystemExit(
            f"SURF_ACCEL_FORCE_CUDA=1 but torch {torch.__version__} has no CUDA support; "
            "install a CUDA build of torch or unset SURF_ACCEL_FORCE_CUDA"
        )
    print(f"surf_accel: torch {torch.__version__} has no CUDA: building the C++ CPU kernels only")
    ext = CppExtension(
        "surf_accel._C",
        cpp_sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
)
