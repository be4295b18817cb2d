"""Every backend of the fused latent ops against float64 oracles on fresh random inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import surf_accel.ops as ops
from surf_accel import _extension
from tests.ops import oracles
from tests.ops.helpers import DTYPES, TOLERANCES, backend_cases, non_contiguous, poison_allocator, rand, seeded

# (B, C, T, H, W, factor): H, W not multiples of any block size; batch 1 and 3; T = 1; C = 1.
SHAPES = [(1, 1, 1, 6, 10, 2), (3, 5, 2, 9, 15, 3), (2, 3, 3, 14, 22, 2), (1, 16, 5, 4, 8, 4), (3, 2, 1, 5, 7, 1)]


def _check(out, expected, dtype):
    assert out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all(), "non-finite output: an element was left unwritten"
    torch.testing.assert_close(out.double().cpu(), expected.cpu(), **TOLERANCES[dtype])


@pytest.mark.parametrize("device,backend", backend_cases("reshift_downsample"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["consistent", "paper"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_reshift_downsample(device, backend, dtype, shape, mode, contiguous):
    gen = seeded(shape, mode, str(dtype))
    *size, f = shape
    b, c, t, h, w = size
    latents, model_output = rand(size, dtype, device, gen), rand(size, dtype, device, gen)
    noise = rand((b, c, t, h // f, w // f), dtype, device, gen)
    if not contiguous:
        latents, model_output = non_contiguous(latents), non_contiguous(model_output)
    sigma, sigma_new = 0.73, 0.41
    expected = oracles.reshift_downsample(latents, model_output, noise, sigma, sigma_new, f, mode)
    poison_allocator(expected.shape, dtype, device)
    out = ops.reshift_downsample(latents, model_output, noise, sigma, sigma_new, f, mode, backend=backend)
    _check(out, expected, dtype)


@pytest.mark.parametrize("device,backend", backend_cases("upsample_mix"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_upsample_mix(device, backend, dtype, shape, mode, contiguous):
    gen = seeded(shape, mode, str(dtype), 1)
    *size, f = shape
    b, c, t, h, w = size
    latents = rand(size, dtype, device, gen)
    noise = rand((b, c, t, h * f, w * f), dtype, device, gen)
    if not contiguous:
        latents, noise = non_contiguous(latents), non_contiguous(noise)
    sigma = 0.37
    expected = oracles.upsample_mix(latents, noise, sigma, f, mode)
    poison_allocator(expected.shape, dtype, device)
    out = ops.upsample_mix(latents, noise, sigma, f, mode, backend=backend)
    _check(out, expected, dtype)


@pytest.mark.parametrize("device,backend", backend_cases("guided_step"))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("guided", [True, False], ids=["cfg", "nocfg"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contig", "strided"])
def test_guided_step(device, backend, dtype, shape, guided, contiguous):
    gen = seeded(shape, guided, str(dtype), 2)
    size = shape[:5]
    latents, v_cond = rand(size, dtype, device, gen), rand(size, dtype, device, gen)
    v_uncond = rand(size, dtype, device, gen) if guided else None
    if not contiguous:
        latents, v_cond = non_contiguous(latents), non_contiguous(v_cond)
    g, sigma, sigma_next = 5.5, 0.62, 0.48
    expected = oracles.guided_step(latents, v_cond, v_uncond, g, sigma, sigma_next)
    poison_allocator(expected.shape, dtype, device)
    out = ops.guided_step(latents, v_cond, v_uncond, g, sigma, sigma_next, backend=backend)
    _check(out, expected, dtype)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 3), c=st.integers(1, 5), t=st.integers(1, 4),
    hq=st.integers(1, 7), wq=st.integers(1, 7), f=st.integers(1, 4),
    sigma=st.floats(0, 1), sigma_new=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
)
def test_property_reshift_then_upsample(backend, b, c, t, hq, wq, f, sigma, sigma_new, seed):
    """Over arbitrary shapes and noise levels, both ops match the oracle in fp32."""
    gen = torch.Generator().manual_seed(seed)
    size = (b, c, t, hq * f, wq * f)
    latents, mo = rand(size, torch.float32, "cpu", gen), rand(size, torch.float32, "cpu", gen)
    noise_lo = rand((b, c, t, hq, wq), torch.float32, "cpu", gen)
    low = ops.reshift_downsample(latents, mo, noise_lo, sigma, sigma_new, f, backend=backend)
    _check(low, oracles.reshift_downsample(latents, mo, noise_lo, sigma, sigma_new, f, "consistent"), torch.float32)
    noise_hi = rand(size, torch.float32, "cpu", gen)
    for mode in ("nearest", "bilinear"):
        up = ops.upsample_mix(low, noise_hi, sigma, f, mode, backend=backend)
        _check(up, oracles.upsample_mix(low, noise_hi, sigma, f, mode), torch.float32)


def test_cpu_backends_present():
    """The CPU build must carry the C++ kernels and the tests the Triton interpreter: their
    parametrized tests above would otherwise be skipped, not run."""
    assert _extension.status().loaded, _extension.status().describe()
    for name, op in ops.OPS.items():
        reasons = op.explain("cpu")
        assert reasons["cpp"] is None, (name, reasons["cpp"])
        assert reasons["triton"] is None, (name, reasons["triton"])
