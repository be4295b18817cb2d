"""Shifted-window attention: every backend that can run here against the float64 explicit-mask
oracle, on fresh random inputs (Triton through its interpreter, tiny shapes)."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from surf_accel.ops import window_attention
from surf_accel.ops.window_attention import WINDOW_ATTENTION, window_seqlens
from surf_accel.ops.window_reference import (
    window_attention_masked,
    window_ids,
    window_mask,
)
from tests.ops.helpers import backend_cases, device_params, seeded

# Outputs are convex combinations of values ~ N(0, 1), so |out| <= ~4. Error sources of a backend
# against the float64 oracle: rounding of the output (<= half an ulp), the attention probabilities
# rounded to the input dtype before the P @ V product (flash-style kernels, flash-attn, SDPA all do
# this; relative error <= eps/2 per term, random signs), fp32 accumulation (negligible). Bound: two
# ulps of an O(1) output (2 * eps), plus that again relative. fp32: the exponentials and sums in fp32
# over <= 128 keys err ~1e-6; 2e-5 leaves margin without hiding a wrong mask (a wrong mask moves
# outputs by O(0.1)).
TOLERANCES = {
    torch.float32: dict(rtol=2e-5, atol=2e-5),
    torch.float16: dict(rtol=2 * torch.finfo(torch.float16).eps, atol=2 * torch.finfo(torch.float16).eps),
    torch.bfloat16: dict(rtol=2 * torch.finfo(torch.bfloat16).eps, atol=2 * torch.finfo(torch.bfloat16).eps),
}
POISON = {torch.float32: 1e30, torch.float16: 3e4, torch.bfloat16: 1e30}

# (grid, window, shift, num_text, valid text counts per batch or None)
CASES = {
    "odd-3d": ((3, 5, 7), (2, 3, 4), (0, 0, 0), 0, None),
    "odd-3d-shift-half": ((3, 5, 7), (2, 3, 4), (1, 1, 2), 0, None),
    "window-larger-than-axes": ((3, 5, 7), (8, 2, 9), (4, 1, 4), 0, None),
    "temporal-only": ((5, 3, 4), (2, 3, 4), (1, 0, 0), 0, None),
    "text-padded": ((3, 5, 7), (2, 3, 4), (1, 1, 2), 6, (6, 2)),
    "text-no-mask": ((3, 4, 3), (2, 3, 2), (0, 0, 0), 3, None),
}


def make_inputs(grid, num_text, valid, b, heads, d, dtype, device, gen):
    s = grid[0] * grid[1] * grid[2] + num_text
    q, k, v = (torch.randn(b, s, heads, d, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
               for _ in range(3))
    text_mask = None
    if valid is not None:
        text_mask = torch.arange(num_text)[None, :] < torch.tensor(valid)[:, None]
        text_mask = text_mask.to(device)
        pad = ~text_mask
        n = s - num_text
        # Padded keys and values are never attended: poison them so any leak shows.
        k[:, n:][pad] = POISON[dtype]
        v[:, n:][pad] = -POISON[dtype]
    return q, k, v, text_mask


def oracle(q, k, v, grid, window, shift, num_text, text_mask):
    return window_attention_masked(q.double(), k.double(), v.double(), grid, window, shift, num_text, text_mask)


# The compiled Triton kernel on CUDA is tested at GPU-like tiles instead
# (test_window_attention_paths.test_triton_real_tiles_every_config, every dtype, head dim and tile):
# each odd shape here would compile every autotune candidate again (~84 compiles against ~56 there).
@pytest.mark.parametrize("device,backend", backend_cases("window_attention", exclude=(("cuda", "triton"),)))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_matches_float64_oracle(device, backend, case, dtype, head_dim):
    grid, window, shift, num_text, valid = CASES[case]
    gen = seeded(case, str(dtype), head_dim, backend)
    q, k, v, text_mask = make_inputs(grid, num_text, valid, 2, 2, head_dim, dtype, device, gen)
    out = window_attention(q, k, v, grid, window, shift, num_text=num_text, text_mask=text_mask, backend=backend)
    assert out.shape == q.shape and out.dtype == dtype and out.device == q.device
    ref = oracle(q, k, v, grid, window, shift, num_text, text_mask)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, **TOLERANCES[dtype])


@pytest.mark.parametrize("device,backend", backend_cases("window_attention"))
@pytest.mark.parametrize("num_text", [0, 4])
def test_whole_grid_window_is_full_attention(device, backend, num_text):
    grid = (2, 3, 5)
    gen = seeded("whole", backend, num_text)
    valid = (4, 1) if num_text else None
    q, k, v, text_mask = make_inputs(grid, num_text, valid, 2, 3, 64, torch.float32, device, gen)
    n = 30
    key_ok = torch.ones(2, n + num_text, dtype=torch.bool, device=device)
    if text_mask is not None:
        key_ok[:, n:] = text_mask
    full = F.scaled_dot_product_attention(q.transpose(1, 2), k.masked_fill(~key_ok[..., None, None], 0).transpose(1, 2),
                                          v.masked_fill(~key_ok[..., None, None], 0).transpose(1, 2),
                                          attn_mask=key_ok[:, None, None, :]).transpose(1, 2)
    for window, shift in (((2, 3, 5), (0, 0, 0)), ((4, 9, 5), (2, 4, 2))):
        out = window_attention(q, k, v, grid, window, shift, num_text=num_text, text_mask=text_mask, backend=backend)
        torch.testing.assert_close(out, full, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("device,backend", backend_cases("window_attention"))
def test_strided_inputs(device, backend):
    """q, k, v as views into one fused (B, S, heads, 3 * D) projection, as a fused QKV layer gives."""
    grid, window, shift, num_text = (3, 5, 7), (2, 3, 4), (1, 1, 2), 0
    gen = seeded("strided", backend)
    qkv = torch.randn(2, 105, 2, 3 * 64, generator=gen).to(device)
    q, k, v = qkv.split(64, dim=-1)
    assert not q.is_contiguous()
    out = window_attention(q, k, v, grid, window, shift, backend=backend)
    torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, num_text, None),
                               **TOLERANCES[torch.float32])


PARTITION_CASES = [((3, 5, 7), (2, 3, 4), (0, 0, 0)), ((3, 5, 7), (2, 3, 4), (1, 1, 2)),
                   ((3, 5, 7), (8, 2, 9), (4, 1, 4)), ((1, 1, 1), (1, 1, 1), (0, 0, 0)), ((4, 6, 6), (3, 4, 5), (2, 3, 1))]


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("grid,window,shift", PARTITION_CASES)
def test_partition_kernels_pack_window_contiguously(device, grid, window, shift):
    """window_pack lays the video tokens out window by window (windows in lexicographic id order,
    tokens in t-major order inside), matching window_seqlens; window_unpack inverts it."""
    key = "CUDA" if device == "cuda" else "CPU"
    if not hasattr(torch.ops.surf_accel, "window_pack") or \
            not torch._C._dispatch_has_kernel_for_dispatch_key("surf_accel::window_pack", key):
        pytest.skip(f"the extension has no {key} window_pack kernel")
    n = grid[0] * grid[1] * grid[2]
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, n + 3, 3, 64, generator=seeded(grid, shift)).to(device, dtype)[..., :40]  # strided
        packed = torch.ops.surf_accel.window_pack(x, list(grid), list(window), list(shift))
        perm = torch.argsort(window_ids(grid, window, shift), stable=True).to(device)
        assert torch.equal(packed, x[:, perm].reshape(2 * n, 3, 40))
        assert sum(window_seqlens(grid, window, shift)) == n
        ids_sorted = window_ids(grid, window, shift)[perm.cpu()]
        assert torch.equal(torch.bincount(ids_sorted)[torch.bincount(ids_sorted) > 0],
                           torch.tensor(window_seqlens(grid, window, shift)))
        back = torch.ops.surf_accel.window_unpack(packed, list(grid), list(window), list(shift), 2)
        assert torch.equal(back, x[:, :n])


def test_mask_matches_definition():
    """The oracle's mask against a literal reading of docs/design.md 3.2, pair by pair."""
    grid, window, shift = (3, 5, 4), (2, 2, 8), (1, 1, 3)
    T, H, W = grid
    mask = window_mask(grid, window, shift)
    coords = list(itertools.product(range(T), range(H), range(W)))

    def wid(c):  # a window >= the axis covers the whole axis
        return tuple(0 if w >= L else (i + s) // w for i, w, s, L in zip(c, window, shift, grid))

    for i, ci in enumerate(coords):
        for j, cj in enumerate(coords):
            assert bool(mask[i, j]) == (wid(ci) == wid(cj))


def test_text_mask_semantics():
    grid, num_text = (2, 2, 2), 3
    text_mask = torch.tensor([[True, False, True]])
    m = window_mask(grid, (1, 2, 2), (0, 0, 0), num_text, text_mask)[0]
    n = 8
    assert m[:n, n:].equal(text_mask.expand(n, 3))          # video queries -> valid text keys
    assert m[n:, :n].all()                                   # text queries -> every video key
    assert m[n:, n:].equal(text_mask.expand(3, 3))           # text queries -> valid text keys
    assert m[:4, 4:n].logical_not().all()                    # two temporal windows of one frame


BAD = [
    (dict(q=torch.randn(2, 30, 2)), "4-D"),
    (dict(grid=(2, 3)), "three ints"),
    (dict(grid=(2, 3, 4)), "sequence length"),
    (dict(window=(0, 3, 5)), ">= 1"),
    (dict(shift=(2, 0, 0)), "shift along T"),
    (dict(shift=(-1, 0, 0)), ">= 0"),
    (dict(num_text=-1), "num_text"),
    (dict(text_mask=torch.ones(2, 4, dtype=torch.bool)), "num_text is 0"),
    (dict(k=torch.randn(2, 30, 2, 8, dtype=torch.float64)), "dtype"),
    (dict(k=torch.randn(2, 31, 2, 8)), "shape"),
    (dict(q=torch.randn(2, 30, 2, 8, dtype=torch.float64)), "dtype"),
]


@pytest.mark.parametrize("bad,match", BAD, ids=[m for _, m in BAD])
def test_bad_inputs_raise_value_error(bad, match):
    args = dict(q=torch.randn(2, 30, 2, 8), k=torch.randn(2, 30, 2, 8), v=torch.randn(2, 30, 2, 8),
                grid=(2, 3, 5), window=(2, 2, 2), shift=(0, 0, 0), num_text=0, text_mask=None)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        window_attention(args["q"], args["k"], args["v"], args["grid"], args["window"], args["shift"],
                         num_text=args["num_text"], text_mask=args["text_mask"])


def test_bad_text_mask():
    q = torch.randn(1, 34, 2, 8)
    for tm, match in ((torch.ones(1, 4), "torch.bool"), (torch.ones(2, 4, dtype=torch.bool), "shape")):
        with pytest.raises(ValueError, match=match):
            window_attention(q, q, q, (2, 3, 5), (2, 2, 2), num_text=4, text_mask=tm)


def test_explain_names_every_backend():
    explained = WINDOW_ATTENTION.explain("cpu")
    assert explained["torch"] is None
    assert set(explained) == {"torch", "cpp", "cuda", "triton", "flex"}
