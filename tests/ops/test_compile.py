"""The compiled and Triton ops are torch.library ops with fake kernels: torch.compile traces them
(whole graph, no breaks in the dispatch layer) and opcheck validates their registrations."""

import pytest
import torch

import surf_accel.ops as ops
from tests.ops.helpers import seeded


def _args(name: str):
    gen = seeded(name)
    x = torch.randn(2, 3, 2, 4, 6, generator=gen)
    v, u = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
    low = torch.randn(2, 3, 2, 2, 3, generator=gen)
    return {
        "guided_step": [(x, v, u, 3.0, 0.5, 0.4), (x, v, None, 3.0, 0.5, 0.4)],
        "reshift_downsample": [(x, v, low, 0.5, 0.4, 2, False), (x, v, low, 0.5, 0.4, 2, True)],
        "upsample_mix": [(low, x, 0.3, 2, False), (low, x, 0.3, 2, True)],
    }[name]


@pytest.mark.parametrize("namespace", ["surf_accel", "surf_accel_triton"])
@pytest.mark.parametrize("name", ["guided_step", "reshift_downsample", "upsample_mix"])
def test_opcheck(namespace, name):
    backend = "cpp" if namespace == "surf_accel" else "triton"
    reason = ops.OPS[name].explain("cpu")[backend]
    if reason:
        pytest.skip(reason)
    op = getattr(getattr(torch.ops, namespace), name)
    for args in _args(name):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_compile_fullgraph_matches_eager(backend):
    gen = seeded("compile", backend)
    x = torch.randn(1, 4, 3, 8, 10, generator=gen)
    v, u = torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)
    noise_lo, noise_hi = torch.randn(1, 4, 3, 4, 5, generator=gen), torch.randn(x.shape, generator=gen)

    def stage_switch(x, v, u):
        y = ops.guided_step(x, v, u, 4.0, 0.7, 0.6, backend=backend)
        low = ops.reshift_downsample(y, v, noise_lo, 0.6, 0.5, 2, backend=backend)
        return ops.upsample_mix(low, noise_hi, 0.3, 2, "bilinear", backend=backend)

    torch._dynamo.reset()
    compiled = torch.compile(stage_switch, fullgraph=True, backend="aot_eager")
    # The C++ op is opaque to the compiler: bit-identical. The torch reference is decomposed by
    # AOTAutograd, which may reorder fp32 arithmetic: a few ulps.
    tol = dict(rtol=0, atol=0) if backend == "cpp" else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled(x, v, u), stage_switch(x, v, u), **tol)
