"""Every memory layout a caller can pass, into every backend that runs here, against float64 oracles.

Each input is given, one at a time, as a permuted view (memory in reversed axis order: a
column-major ``text_mask``), a strided slice (step 2 along every axis, so the innermost stride is
not 1), a view at a storage offset of 7 elements (no 16-byte alignment), and an expanded view (stride
0 along one axis: heads for q/k/v, batch for ``text_mask``, time for latents). The values a backend
sees are those of the relaid view; the oracles read the same view, so a backend that assumes a
stride it was not given shows up as a wrong value, not a crash.
"""

import pytest
import torch

import surf_accel.ops as ops
from surf_accel.ops import window_attention
from tests.ops import oracles
from tests.ops.helpers import TOLERANCES as LATENT_TOLERANCES
from tests.ops.helpers import seeded
from tests.ops.test_window_attention import POISON, oracle
from tests.ops.test_window_attention import TOLERANCES as ATTENTION_TOLERANCES

LAYOUTS = ("permuted", "strided", "offset", "expanded")
# The axis an expanded view repeats, by input: heads of (B, S, heads, D), batch of text_mask, T of latents.
EXPAND_AXIS = {4: 2, 2: 0, 5: 2}


def relayout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (contiguous) in ``layout``; the values are unchanged except for "expanded", which
    repeats index 0 of its axis."""
    if layout == "permuted":
        order = tuple(reversed(range(x.dim())))
        out = x.permute(order).contiguous().permute(order)
    elif layout == "strided":
        big = torch.zeros([2 * n for n in x.shape], dtype=x.dtype)
        out = big[tuple(slice(None, None, 2) for _ in x.shape)]
        out.copy_(x)
    elif layout == "offset":
        buf = torch.zeros(x.numel() + 7, dtype=x.dtype)
        out = buf[7:].view(x.shape)
        out.copy_(x)
    else:
        axis = EXPAND_AXIS[x.dim()]
        out = x.narrow(axis, 0, 1).expand(x.shape)
    assert out.shape == x.shape and (not out.is_contiguous() or out.storage_offset() > 0)
    return out


def _cpu_backends(*op_names: str) -> list:
    """(op, backend) for every implementation of the ops but cuda, skipped (never passed) where it
    cannot run on the CPU here."""
    return [pytest.param(op, b, marks=[pytest.mark.skip(reason=r)] if r else [], id=f"{op}-{b}")
            for op in op_names for b, r in ops.OPS[op].explain("cpu", torch.float32).items()
            if b != "cuda" and b in ops.OPS[op].impls]


# ---- window attention --------------------------------------------------------------------------
# (grid, window, shift, num_text, valid text per batch item): 3D windows with padded text (the
# pack path, the Triton kernel's window arithmetic and its text-mask loads), and temporal windows
# (the partition backends' in-place slab path, the Triton kernel's TEMPORAL variant).
ATTENTION_CASES = {
    "3d-text": ((2, 3, 4), (2, 2, 3), (1, 1, 1), 5, (2, 5)),
    "temporal": ((4, 2, 3), (2, 2, 3), (1, 0, 0), 0, None),
}
ATTENTION_INPUTS = {"3d-text": ("q", "k", "v", "text_mask"), "temporal": ("q", "k", "v")}


def _attention_inputs(grid, num_text, valid, gen):
    b, heads, d = 2, 2, 16
    s = grid[0] * grid[1] * grid[2] + num_text
    q, k, v = (torch.randn(b, s, heads, d, generator=gen, dtype=torch.float64).float() for _ in range(3))
    text_mask = None
    if valid is not None:
        text_mask = torch.arange(num_text)[None, :] < torch.tensor(valid)[:, None]
        n = s - num_text
        # Padded keys and values are never attended: poison them so a misread mask shows.
        k[:, n:][~text_mask] = POISON[torch.float32]
        v[:, n:][~text_mask] = -POISON[torch.float32]
    return {"q": q, "k": k, "v": v, "text_mask": text_mask}


@pytest.mark.parametrize("op_name,backend", _cpu_backends("window_attention"))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case,name", [(c, n) for c, names in ATTENTION_INPUTS.items() for n in names])
def test_window_attention_layouts(op_name, backend, layout, case, name):
    grid, window, shift, num_text, valid = ATTENTION_CASES[case]
    x = _attention_inputs(grid, num_text, valid, seeded("layout", case, name, layout))
    if name == "text_mask" and layout == "expanded":
        # Both batch items take item 0's mask (2 valid of 5): re-poison item 1's newly padded keys.
        x["text_mask"] = relayout(x["text_mask"], layout)
        n = x["k"].shape[1] - num_text
        x["k"][:, n:][~x["text_mask"]] = POISON[torch.float32]
        x["v"][:, n:][~x["text_mask"]] = -POISON[torch.float32]
    else:
        x[name] = relayout(x[name], layout)
    out = window_attention(x["q"], x["k"], x["v"], grid, window, shift, num_text=num_text,
                           text_mask=x["text_mask"], backend=backend)
    ref = oracle(x["q"], x["k"], x["v"], grid, window, shift, num_text, x["text_mask"])
    torch.testing.assert_close(out.double(), ref, **ATTENTION_TOLERANCES[torch.float32])


# ---- latent ops ----------------------------------------------------------------------------------
def _latent(shape, gen):
    return torch.randn(shape, generator=gen, dtype=torch.float64).float()


LATENT_INPUTS = {
    "reshift_downsample": ("latents", "model_output", "noise"),
    "upsample_mix": ("latents", "noise"),
    "guided_step": ("latents", "v_cond", "v_uncond"),
}
SIZE, FACTOR = (2, 3, 2, 6, 10), 2
LOW = (2, 3, 2, 3, 5)


def _latent_call(op_name: str, gen):
    """(inputs by name, call(inputs, backend), float64 oracle(inputs))."""
    if op_name == "reshift_downsample":
        x = {"latents": _latent(SIZE, gen), "model_output": _latent(SIZE, gen), "noise": _latent(LOW, gen)}
        args = (0.73, 0.41, FACTOR, "consistent")
        return (x, lambda x, be: ops.reshift_downsample(x["latents"], x["model_output"], x["noise"], *args, backend=be),
                lambda x: oracles.reshift_downsample(x["latents"], x["model_output"], x["noise"], *args))
    if op_name == "upsample_mix":
        x = {"latents": _latent(LOW, gen), "noise": _latent(SIZE, gen)}
        args = (0.37, FACTOR, "bilinear")
        return (x, lambda x, be: ops.upsample_mix(x["latents"], x["noise"], *args, backend=be),
                lambda x: oracles.upsample_mix(x["latents"], x["noise"], *args))
    x = {"latents": _latent(SIZE, gen), "v_cond": _latent(SIZE, gen), "v_uncond": _latent(SIZE, gen)}
    args = (5.5, 0.62, 0.48)
    return (x, lambda x, be: ops.guided_step(x["latents"], x["v_cond"], x["v_uncond"], *args, backend=be),
            lambda x: oracles.guided_step(x["latents"], x["v_cond"], x["v_uncond"], *args))


@pytest.mark.parametrize("op_name,backend", _cpu_backends(*LATENT_INPUTS))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_latent_op_layouts(op_name, backend, layout):
    for name in LATENT_INPUTS[op_name]:
        x, call, oracle_fn = _latent_call(op_name, seeded("latent-layout", op_name, name, layout))
        x[name] = relayout(x[name], layout)
        out = call(x, backend)
        assert out.is_contiguous() and torch.isfinite(out).all()
        torch.testing.assert_close(out.double(), oracle_fn(x), **LATENT_TOLERANCES[torch.float32], msg=name)
