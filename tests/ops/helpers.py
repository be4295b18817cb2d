"""Test utilities shared by the op tests: devices and backends to cover, fresh inputs, poisoning."""

import zlib

import pytest
import torch

from surf_accel.ops import OPS

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# One ulp of the output dtype, relative: backends compute in fp32 and round once at the store, so
# they may differ from the correctly rounded float64 oracle by one rounding step of the output.
# fp32 outputs: the fp32 arithmetic itself (a few operations on O(10) values) errs ~1e-6.
TOLERANCES = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=torch.finfo(torch.float16).eps, atol=torch.finfo(torch.float16).eps),
    torch.bfloat16: dict(rtol=torch.finfo(torch.bfloat16).eps, atol=torch.finfo(torch.bfloat16).eps),
}


def backend_cases(op_name: str, exclude: tuple[tuple[str, str], ...] = ()):
    """(device, backend) pairs but ``exclude``, each skipped (never passed) where the backend cannot
    run here; the CUDA ones marked ``gpu``."""
    cases = []
    for device in DEVICES:
        for backend in ("torch", "cpp", "cuda", "triton"):
            if (device, backend) in exclude:
                continue
            reason = OPS[op_name].explain(device)[backend]
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            if device == "cuda":
                marks.append(pytest.mark.gpu)
            cases.append(pytest.param(device, backend, marks=marks, id=f"{device}-{backend}"))
    return cases


def device_params():
    """The devices to run on, the CUDA one marked ``gpu``."""
    return [pytest.param(d, marks=[pytest.mark.gpu] if d == "cuda" else [], id=d) for d in DEVICES]


def rand(shape, dtype, device, gen, scale=1.0, offset=0.0):
    """Fresh Gaussian input, rounded to ``dtype`` (the oracle then sees exactly what the kernel sees)."""
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset).to(device=device, dtype=dtype)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` laid out with H and W swapped in memory (a transposed view)."""
    out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not out.is_contiguous() and torch.equal(out, t)
    return out


def poison_allocator(shape, dtype, device) -> None:
    """Free a NaN-filled block of the output's size so an allocator that recycles it hands the op
    garbage rather than a previous call's correct answer: unwritten elements then show up."""
    block = torch.full(shape, float("nan"), dtype=dtype, device=device)
    del block


def seeded(*parts) -> torch.Generator:
    """A generator seeded from the test case's parameters (stable across processes)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(parts).encode()))
