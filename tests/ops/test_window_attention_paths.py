"""Window attention: which path serves a call and that each fast path equals the float64 oracle.

Dispatch (varlen library present or not), the in-place temporal path of the partition backends
(no pack/unpack), the sync-free text path, the Triton kernel at GPU-like tiles (frames of more than
one block, several blocks per window) under the interpreter and at its real autotune configs on a
GPU, and the flex_attention backend as a second oracle."""

import importlib
import logging

import pytest
import torch

import surf_accel.ops.dispatch as dispatch
from surf_accel.ops import window_attention
from surf_accel.ops.window_attention import flex, partition
from surf_accel.ops.window_reference import window_mask
from tests.ops.helpers import seeded
from tests.ops.test_window_attention import CASES, TOLERANCES, make_inputs, oracle

wa = importlib.import_module("surf_accel.ops.window_attention")  # the package re-exports the function's name
CUDA = torch.device("cuda")


# ---- dispatch ---------------------------------------------------------------------------------
@pytest.fixture
def everything_built(monkeypatch):
    """Pretend every backend can run here, so only the op's own ranking decides."""
    monkeypatch.setattr(dispatch, "_static_reason", lambda *args: None)
    monkeypatch.setattr(dispatch, "_LOGGED", set())


def _libraries(monkeypatch, flash: bool, xformers: bool):
    usable = {"flash-attn": flash, "xformers": xformers}
    monkeypatch.setattr(partition, "varlen_reason",
                        lambda lib, device, dtype: None if usable[lib] else f"{lib} is not installed")


@pytest.mark.parametrize("flash,xformers,dtype,expected", [
    (False, False, torch.bfloat16, "triton"),  # the slow-fallback case of issue 13: pack + padded SDPA
    (True, False, torch.bfloat16, "cuda"),
    (False, True, torch.float16, "cuda"),
    (False, False, torch.float32, "cuda"),  # fp32: SDPA on the partitioned windows, not the spilling kernel
    (True, True, torch.float32, "cuda"),  # flash-attn and xformers serve fp16/bf16 only: SDPA all the same
])
def test_cuda_choice_follows_the_varlen_library(everything_built, monkeypatch, flash, xformers, dtype, expected):
    _libraries(monkeypatch, flash, xformers)
    assert wa.WINDOW_ATTENTION.choose(CUDA, dtype) == (expected, [])
    assert wa.WINDOW_ATTENTION.choose(torch.device("cpu"), dtype)[0] == "cpp"


def test_choice_is_logged_once_with_the_reason(everything_built, monkeypatch, caplog):
    _libraries(monkeypatch, False, False)
    with caplog.at_level(logging.INFO, logger="surf_accel"):
        for _ in range(3):
            assert wa.WINDOW_ATTENTION.select(CUDA, torch.bfloat16) == "triton"
    lines = [r.getMessage() for r in caplog.records if "window_attention" in r.getMessage()]
    assert len(lines) == 1
    assert "triton" in lines[0] and "flash-attn is not installed" in lines[0] and "padded SDPA" in lines[0]


def test_info_shows_the_choice_and_why(everything_built, monkeypatch):
    import surf_accel.info as info

    _libraries(monkeypatch, True, False)
    rows = {name: chosen for name, chosen, _ in info.backend_table("cuda", torch.bfloat16)}
    assert rows["window_attention"].startswith("cuda (flash-attn varlen")


def test_flex_is_served_on_request_only(everything_built):
    assert "flex" not in wa._preference(CUDA, torch.bfloat16)[0]
    assert "flex" not in wa._preference(torch.device("cpu"), torch.float32)[0]


# ---- partition backends: temporal windows in place, text without host syncs ------------------
TEMPORAL = {
    "whole-windows": ((4, 3, 5), (2, 3, 5), (0, 0, 0)),
    "shifted-split-edge": ((5, 3, 4), (2, 9, 4), (1, 0, 0)),  # windows of 1, 2, 2 frames
    "partial-tail": ((5, 2, 3), (3, 2, 3), (0, 0, 0)),
    "one-window": ((3, 2, 2), (8, 2, 2), (0, 0, 0)),
}


def _partition_reason():
    return wa.WINDOW_ATTENTION.explain("cpu")["cpp"]


@pytest.mark.parametrize("case", list(TEMPORAL))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_temporal_windows_run_in_place(monkeypatch, case, dtype):
    """Temporal-only windows never pack: the in-place slab path serves them and equals the oracle
    (fused-QKV strided views included)."""
    if _partition_reason():
        pytest.skip(_partition_reason())
    grid, window, shift = TEMPORAL[case]

    def no_pack(*args):
        raise AssertionError("temporal windows must not be packed")

    monkeypatch.setattr(partition, "_pack", no_pack)
    n = grid[0] * grid[1] * grid[2]
    qkv = torch.randn(2, n, 3, 3 * 16, generator=seeded("slab", case, str(dtype)), dtype=torch.float64).to(dtype)
    q, k, v = qkv.split(16, dim=-1)
    out = window_attention(q, k, v, grid, window, shift, backend="cpp")
    torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, 0, None), **TOLERANCES[dtype])


def test_non_temporal_windows_still_pack(monkeypatch):
    if _partition_reason():
        pytest.skip(_partition_reason())
    calls = []
    real = partition._pack
    monkeypatch.setattr(partition, "_pack", lambda *a: calls.append(1) or real(*a))
    grid, window, shift, num_text, valid = CASES["odd-3d-shift-half"]
    q, k, v, _ = make_inputs(grid, 0, None, 1, 2, 16, torch.float32, "cpu", seeded("pack"))
    out = window_attention(q, k, v, grid, window, shift, backend="cpp")
    assert len(calls) == 3
    torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, 0, None), **TOLERANCES[torch.float32])


@pytest.mark.parametrize("grid,window,shift", [((3, 5, 7), (2, 3, 4), (1, 1, 2)), ((4, 3, 5), (2, 3, 5), (1, 0, 0))])
def test_text_path_with_lengths_never_syncs(monkeypatch, grid, window, shift):
    """With text_lengths the partition path reads nothing back from the device: .tolist()/.item()
    would raise here; the result equals the oracle and the path that counts the mask itself."""
    if _partition_reason():
        pytest.skip(_partition_reason())
    num_text, valid = 6, (6, 2)
    q, k, v, tm = make_inputs(grid, num_text, valid, 2, 2, 16, torch.float32, "cpu", seeded("sync", grid))
    counted = window_attention(q, k, v, grid, window, shift, num_text=num_text, text_mask=tm, backend="cpp")

    def no_sync(*args):
        raise AssertionError("host sync in the window-attention text path")

    monkeypatch.setattr(torch.Tensor, "tolist", no_sync)
    monkeypatch.setattr(torch.Tensor, "item", no_sync)
    out = window_attention(q, k, v, grid, window, shift, num_text=num_text, text_mask=tm, text_lengths=valid,
                           backend="cpp")
    monkeypatch.undo()
    assert torch.equal(out, counted)
    torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, num_text, tm),
                               **TOLERANCES[torch.float32])


@pytest.mark.parametrize("bad,match", [((1,), "2 host ints"), ((7, 2), r"\[0, num_text"), (None, "without text_mask")])
def test_bad_text_lengths(bad, match):
    q = torch.randn(2, 34, 2, 8)
    tm = torch.ones(2, 4, dtype=torch.bool) if bad is not None else None
    with pytest.raises(ValueError, match=match):
        window_attention(q, q, q, (2, 3, 5), (2, 2, 2), num_text=4, text_mask=tm, text_lengths=bad or (4, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_text_path_never_syncs(backend):
    reason = wa.WINDOW_ATTENTION.explain("cuda", torch.bfloat16)[backend]
    if reason:
        pytest.skip(reason)
    grid, window, shift = (3, 5, 7), (2, 3, 4), (1, 1, 2)
    q, k, v, tm = make_inputs(grid, 6, (6, 2), 2, 2, 64, torch.bfloat16, "cuda", seeded("cuda-sync", backend))
    window_attention(q, k, v, grid, window, shift, num_text=6, text_mask=tm, text_lengths=(6, 2), backend=backend)
    torch.cuda.synchronize()  # first call: cached tables are built (host-to-device copies)
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = window_attention(q, k, v, grid, window, shift, num_text=6, text_mask=tm, text_lengths=(6, 2),
                               backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, 6, tm), **TOLERANCES[torch.bfloat16])


# ---- Triton kernel at GPU-like tiles ------------------------------------------------------------
# Frames of 180 and 192 tokens (more than one 128-row block), windows of 2-3 blocks, blocks that
# straddle two windows, text with padding; head dim 16 keeps the interpreter fast.
TILE_CASES = {
    "temporal": ((4, 9, 20), (2, 100, 100), (0, 0, 0), 0, None),
    "temporal-shifted-text": ((4, 9, 20), (3, 9, 20), (1, 0, 0), 5, (5, 2)),
    "3d-shifted": ((3, 12, 16), (2, 8, 8), (1, 4, 4), 0, None),
    "3d-text": ((3, 12, 16), (2, 8, 8), (0, 0, 0), 4, (1, 4)),
}


def _triton_reason(device):
    return wa.WINDOW_ATTENTION.explain(device)["triton"]


class _LaunchSpy:
    """Records the TEMPORAL flag of every direct kernel launch."""

    def __init__(self, kernel):
        self.kernel, self.temporal = kernel, []

    def __getitem__(self, launch_grid):
        run = self.kernel[launch_grid]

        def call(*args, **kwargs):
            self.temporal.append(kwargs["TEMPORAL"])
            return run(*args, **kwargs)
        return call


def _check_tiles(device, case, dtype, head_dim, config, monkeypatch=None):
    from surf_accel.triton_kernels import window_attention as kernels

    grid, window, shift, num_text, valid = TILE_CASES[case]
    q, k, v, tm = make_inputs(grid, num_text, valid, 2 if valid else 1, 2, head_dim, dtype, device,
                              seeded("tiles", case, str(dtype), head_dim, config))
    out = kernels.window_attention(q, k, v, grid, window, shift, num_text, tm, config=config)
    torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, num_text, tm), **TOLERANCES[dtype])


@pytest.mark.parametrize("case", list(TILE_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_triton_gpu_tiles_interpreted(monkeypatch, case, dtype):
    if _triton_reason("cpu"):
        pytest.skip(_triton_reason("cpu"))
    from surf_accel.triton_kernels import window_attention as kernels

    spy = _LaunchSpy(kernels._window_attn_fwd_kernel)
    monkeypatch.setattr(kernels, "_window_attn_fwd_kernel", spy)
    _check_tiles("cpu", case, dtype, 16, (128, 64, 4, 1))
    assert spy.temporal == [case.startswith("temporal")]


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(TILE_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
def test_triton_real_tiles_every_config(case, dtype, head_dim):
    if _triton_reason("cuda"):
        pytest.skip(_triton_reason("cuda"))
    from surf_accel.triton_kernels import window_attention as kernels

    for config in [*kernels.configs(head_dim, dtype), None]:  # None: the autotuner's pick
        _check_tiles("cuda", case, dtype, head_dim, config)


# ---- flex_attention backend ---------------------------------------------------------------------
# flex's eager CPU path computes scores, softmax and P @ V in fp32 and rounds once; its fused kernel
# rounds P to the input dtype before P @ V like every flash-style kernel: the same error sources as
# the other backends (see TOLERANCES in test_window_attention), so the same per-dtype bounds hold.
FLEX_CASES = {**CASES, **TILE_CASES}


def _flex_reason(device="cpu"):
    return wa.WINDOW_ATTENTION.explain(device)["flex"]


@pytest.mark.parametrize("case", list(FLEX_CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_flex_matches_float64_oracle(case, dtype):
    if _flex_reason():
        pytest.skip(_flex_reason())
    grid, window, shift, num_text, valid = FLEX_CASES[case]
    q, k, v, tm = make_inputs(grid, num_text, valid, 2, 2, 16, dtype, "cpu", seeded("flex", case, str(dtype)))
    out = window_attention(q, k, v, grid, window, shift, num_text=num_text, text_mask=tm, backend="flex")
    assert out.shape == q.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, num_text, tm), **TOLERANCES[dtype])


@pytest.mark.parametrize("case", list(FLEX_CASES))
def test_flex_block_structure_covers_exactly_the_mask(case):
    """Every block pair with an allowed (query, key) is listed; a "full" block allows every pair."""
    grid, window, shift, num_text, valid = FLEX_CASES[case]
    tm = None if valid is None else torch.arange(num_text)[None] < torch.tensor(valid)[:, None]
    _, kv_num, kv_idx, full_num, full_idx = flex._flex_tables(grid, window, shift, num_text, tm is not None,
                                                              torch.device("cpu"))
    mask = window_mask(grid, window, shift, num_text, tm)
    mask = mask if mask.dim() == 3 else mask[None]
    s, blk = mask.shape[-1], flex.FLEX_BLOCK
    nb = kv_num.shape[-1]
    listed = torch.zeros(nb, nb, dtype=torch.bool)
    full = torch.zeros(nb, nb, dtype=torch.bool)
    for i in range(nb):
        listed[i, kv_idx[0, 0, i, :kv_num[0, 0, i]].long()] = True
        full[i, full_idx[0, 0, i, :full_num[0, 0, i]].long()] = True
    assert not (listed & full).any()
    for i in range(nb):
        for j in range(nb):
            tile = mask[:, i * blk:(i + 1) * blk, j * blk:(j + 1) * blk]
            assert bool(listed[i, j] | full[i, j]) == bool(tile.any()), (i, j)
            if full[i, j]:
                assert tile.all() and tile.shape[-2:] == (blk, blk), (i, j)
    assert s > blk or nb == 1


def test_flex_compiles_once_for_every_grid():
    """The fused flex kernel (torch.compile) honours the block structure: it skips unlisted blocks
    and evaluates no mask in full ones, so a wrong table shows here (eager flex evaluates the mask
    everywhere). It is compiled once with dynamic shapes: grids of other token counts (a SURF call's
    stages) reuse the graph instead of recompiling until dynamo's limit sends flex to eager."""
    if _flex_reason():
        pytest.skip(_flex_reason())
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    flex.compiled_flex.cache_clear()
    counters.clear()
    for grid, valid in (((3, 12, 16), (1, 4)), ((2, 12, 16), (4, 3)), ((4, 10, 16), (2, 2))):
        window, shift, num_text = (2, 8, 8), (1, 4, 4), 4
        q, k, v, tm = make_inputs(grid, num_text, valid, 2, 2, 16, torch.float32, "cpu", seeded("flex-compiled", grid))
        out = flex.flex_window_attention(q, k, v, grid, window, shift, num_text, tm, compiled=True)
        torch.testing.assert_close(out.double(), oracle(q, k, v, grid, window, shift, num_text, tm),
                                   **TOLERANCES[torch.float32])
    assert counters["stats"]["unique_graphs"] == 1


def test_eager_flex_refuses_a_full_score_matrix_it_cannot_hold(monkeypatch):
    """Eager flex (the CPU path) materialises B x heads x S x S scores: past the bound the flex backend
    is unusable for the call with the size named, and a direct call raises before allocating."""
    if _flex_reason():
        pytest.skip(_flex_reason())
    grid = (2, 3, 4)
    q = torch.randn(2, 24, 3, 16)
    assert wa.WINDOW_ATTENTION.reason_unusable("flex", q.device, q.dtype, (q, q, q, grid)) is None
    monkeypatch.setattr(flex, "EAGER_MAX_SCORE_BYTES", 4 * 2 * 3 * 24 * 24 - 1)
    reason = wa.WINDOW_ATTENTION.reason_unusable("flex", q.device, q.dtype, (q, q, q, grid))
    assert "full 2x3x24x24 score matrix" in reason
    with pytest.raises(dispatch.BackendUnavailableError, match="score matrix"):
        window_attention(q, q, q, grid, (1, 2, 2), backend="flex")
    with pytest.raises(ValueError, match="score matrix"):
        flex.flex_window_attention(q, q, q, grid, (1, 2, 2), (0, 0, 0), compiled=False)
