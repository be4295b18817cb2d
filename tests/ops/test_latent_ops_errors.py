"""Bad input to the latent ops raises ValueError naming the problem, whatever the backend."""

import pytest
import torch

import surf_accel.ops as ops


def _x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(shape, dtype=dtype, device=device)


CASES = {
    "rank": (lambda: ops.guided_step(_x(2, 3, 4, 5), _x(2, 3, 4, 5), None, 1.0, 0.5, 0.4), "5-D"),
    "shape": (lambda: ops.guided_step(_x(1, 2, 1, 4, 4), _x(1, 2, 1, 4, 5), None, 1.0, 0.5, 0.4), "shape"),
    "uncond shape": (lambda: ops.guided_step(_x(1, 2, 1, 4, 4), _x(1, 2, 1, 4, 4), _x(1, 3, 1, 4, 4), 1.0, 0.5, 0.4), "v_uncond"),
    "dtype": (lambda: ops.guided_step(_x(1, 2, 1, 4, 4), _x(1, 2, 1, 4, 4, dtype=torch.float16), None, 1.0, 0.5, 0.4), "dtype"),
    "int dtype": (lambda: ops.guided_step(torch.ones(1, 2, 1, 4, 4, dtype=torch.int32), torch.ones(1, 2, 1, 4, 4, dtype=torch.int32), None, 1.0, 0.5, 0.4), "dtype"),
    "device": (lambda: ops.guided_step(_x(1, 2, 1, 4, 4), _x(1, 2, 1, 4, 4, device="meta"), None, 1.0, 0.5, 0.4), "device"),
    "sigma > 1": (lambda: ops.guided_step(_x(1, 2, 1, 4, 4), _x(1, 2, 1, 4, 4), None, 1.0, 1.5, 0.4), "sigma"),
    "sigma nan": (lambda: ops.guided_step(_x(1, 2, 1, 4, 4), _x(1, 2, 1, 4, 4), None, 1.0, 0.5, float("nan")), "sigma_next"),
    "guidance inf": (lambda: ops.guided_step(_x(1, 2, 1, 4, 4), _x(1, 2, 1, 4, 4), None, float("inf"), 0.5, 0.4), "guidance_scale"),
    "factor divides": (lambda: ops.reshift_downsample(_x(1, 2, 1, 6, 5), _x(1, 2, 1, 6, 5), _x(1, 2, 1, 3, 2), 0.5, 0.5, 2), "divide"),
    "factor zero": (lambda: ops.reshift_downsample(_x(1, 2, 1, 6, 6), _x(1, 2, 1, 6, 6), _x(1, 2, 1, 3, 3), 0.5, 0.5, 0), "factor"),
    "noise shape": (lambda: ops.reshift_downsample(_x(1, 2, 1, 6, 6), _x(1, 2, 1, 6, 6), _x(1, 2, 1, 6, 6), 0.5, 0.5, 2), "noise"),
    "sigma_new < 0": (lambda: ops.reshift_downsample(_x(1, 2, 1, 6, 6), _x(1, 2, 1, 6, 6), _x(1, 2, 1, 3, 3), 0.5, -0.1, 2), "sigma_new"),
    "reshift mode": (lambda: ops.reshift_downsample(_x(1, 2, 1, 6, 6), _x(1, 2, 1, 6, 6), _x(1, 2, 1, 3, 3), 0.5, 0.5, 2, "literal"), "mode"),
    "upsample noise": (lambda: ops.upsample_mix(_x(1, 2, 1, 3, 3), _x(1, 2, 1, 3, 3), 0.5, 2), "noise"),
    "upsample mode": (lambda: ops.upsample_mix(_x(1, 2, 1, 3, 3), _x(1, 2, 1, 6, 6), 0.5, 2, "bicubic"), "mode"),
    "sigma tensor": (lambda: ops.upsample_mix(_x(1, 2, 1, 3, 3), _x(1, 2, 1, 6, 6), torch.tensor(0.5), 2), "sigma"),
    "empty": (lambda: ops.upsample_mix(_x(0, 2, 1, 3, 3), _x(0, 2, 1, 6, 6), 0.5, 2), "empty"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_raises_value_error(case):
    call, word = CASES[case]
    with pytest.raises(ValueError, match=word):
        call()
