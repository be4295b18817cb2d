"""Sparse attention op (``surf_accel.ops.sparse_attention``): block masks against a hand-built mask, dense
equality, the pattern's validation and its key count."""

import pytest
import torch
import torch.nn.functional as F

from surf_accel.ops import sparse_attention as sa
from surf_accel.ops.sparse_attention import SparsePattern

BLOCK = 128  # flex's block size the tables are built for


def hand_mask(grid, pattern, num_text=0, valid=None):
    """The pattern's rule written out token pair by token pair (module docstring), independent of the
    group/tile tables: ``(B, S, S)`` bool, B = len(valid) (1 without a text mask)."""
    T, H, W = grid
    coords = [(t, h, w) for t in range(T) for h in range(H) for w in range(W)]
    n = len(coords)
    s = n + num_text

    def window_of(i, axis):
        tile, win, size = pattern.tile[axis], pattern.window[axis], grid[axis]
        n_tiles = size // tile
        start = min(max(i // tile - win // 2, 0), max(n_tiles - win, 0))
        return start, start + win

    m = torch.zeros(s, s, dtype=torch.bool)
    for i, qc in enumerate(coords):
        spans = [window_of(qc[a], a) for a in range(3)]
        for j, kc in enumerate(coords):
            local = all(lo <= kc[a] // pattern.tile[a] < hi for a, (lo, hi) in enumerate(spans))
            m[i, j] = local or qc[0] < pattern.global_frames or kc[0] < pattern.global_frames
    m[:n, n:] = True  # video queries see the text
    m[n:, :] = True  # text queries see everything
    if valid is None:
        return m[None]
    out = m[None].repeat(len(valid), 1, 1)
    for b, nv in enumerate(valid):
        out[b, :, n + nv:] = False  # padded text is never attended
    return out


# odd grids, several flex blocks (S > 128), text with padding
CASES = {
    "tiles-odd": ((5, 7, 9), SparsePattern((1, 7, 3), (3, 1, 1), 1), 0, None),
    "per-token-3x3x3": ((3, 7, 9), SparsePattern((1, 1, 1), (3, 3, 3), 0), 0, None),
    "edge-slide": ((7, 3, 9), SparsePattern((1, 3, 3), (3, 1, 2), 2), 0, None),
    "text-padded": ((3, 5, 9), SparsePattern((1, 5, 3), (1, 1, 1), 1), 6, (4, 6)),
    "text-all-valid": ((5, 3, 9), SparsePattern((5, 1, 3), (1, 3, 1), 0), 5, None),
}


def _inputs(grid, num_text, valid, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    b = 1 if valid is None else len(valid)
    s = grid[0] * grid[1] * grid[2] + num_text
    q, k, v = (torch.randn(b, s, 2, 16, generator=g).to(dtype) for _ in range(3))
    tm = None if valid is None else torch.arange(num_text)[None] < torch.tensor(valid)[:, None]
    return q, k, v, tm


def _sdpa(q, k, v, mask):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=None if mask is None else mask[:, None])
    return out.transpose(1, 2)


@pytest.mark.parametrize("case", list(CASES))
def test_block_tables_cover_exactly_the_hand_mask(case):
    """Every block pair with an allowed pair is listed, no other; a "full" block (mask not evaluated
    by the fused kernel) allows every pair: a missing block would drop keys, a wrong full block
    would attend to masked ones, a superfluous one would only cost time (all three caught here)."""
    grid, pattern, num_text, valid = CASES[case]
    tm = None if valid is None else torch.arange(num_text)[None] < torch.tensor(valid)[:, None]
    bm = sa.block_mask(grid, pattern, num_text, tm)
    mask = hand_mask(grid, pattern, num_text, valid)
    s = mask.shape[-1]
    nb = -(-s // BLOCK)
    assert nb > 1
    kv_num, kv_idx = bm.kv_num_blocks[0, 0], bm.kv_indices[0, 0]
    full_num, full_idx = bm.full_kv_num_blocks[0, 0], bm.full_kv_indices[0, 0]
    for i in range(nb):
        listed = set(kv_idx[i, :kv_num[i]].tolist())
        full = set(full_idx[i, :full_num[i]].tolist())
        assert not listed & full
        for j in range(nb):
            tile = mask[:, i * BLOCK:(i + 1) * BLOCK, j * BLOCK:(j + 1) * BLOCK]
            assert (j in listed or j in full) == bool(tile.any()), (i, j)
            if j in full:
                assert tile.all() and tile.shape[-2:] == (BLOCK, BLOCK), (i, j)


# flash-attention's rule: a low-precision kernel may err at most ~2x PyTorch's own low-precision
# attention (SDPA in that dtype with the same mask) against a float64 reference, plus rounding slack.
SLACK = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", ["tiles-odd", "text-padded", "edge-slide"])
def test_sparse_attention_equals_masked_attention(case, dtype):
    grid, pattern, num_text, valid = CASES[case]
    q, k, v, tm = _inputs(grid, num_text, valid, dtype, seed=len(case))
    mask = hand_mask(grid, pattern, num_text, valid)
    ref = _sdpa(q.double(), k.double(), v.double(), mask)
    torch_err = (_sdpa(q, k, v, mask).double() - ref).abs().max()
    out = sa.attend(q, k, v, grid, pattern, num_text, tm)
    assert out.dtype == dtype and out.shape == q.shape
    assert (out.double() - ref).abs().max() <= 2 * torch_err + SLACK[dtype]
    assert (out.double() - _sdpa(q.double(), k.double(), v.double(), None)).abs().max() > 0.05  # sparse, not dense


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_window_covering_the_grid_is_dense_attention(dtype):
    grid = (3, 5, 9)
    q, k, v, _ = _inputs(grid, 0, None, dtype, seed=1)
    ref = _sdpa(q.double(), k.double(), v.double(), None)
    torch_err = (_sdpa(q, k, v, None).double() - ref).abs().max()
    for pattern in (SparsePattern((1, 5, 3), (3, 1, 3), 0), SparsePattern((1, 1, 1), (100, 100, 100), 0),
                    SparsePattern((1, 1, 1), (1, 1, 1), 3)):  # every frame global
        out = sa.attend(q, k, v, grid, pattern)
        assert (out.double() - ref).abs().max() <= 2 * torch_err + SLACK[dtype], pattern


def test_pattern_that_does_not_fit_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"does not divide the H axis \(5 tokens\).*\[1, 5\]"):
        SparsePattern((1, 2, 1)).check_grid((3, 5, 8))
    with pytest.raises(ValueError, match="global_frames <= the latent frame count"):
        SparsePattern((1, 1, 1), global_frames=4).check_grid((3, 5, 8))
    for bad in (dict(tile=(0, 1, 1)), dict(window=(1, 1)), dict(global_frames=-1), dict(tile=(1.0, 1, 1))):
        with pytest.raises(ValueError):
            SparsePattern(**bad)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_fast_path_compiled_flex_matches_masked_attention(dtype):
    """On CUDA the pattern runs through torch.compile's fused flex kernel (skipping unlisted blocks and
    evaluating no mask in full ones): it must agree with SDPA under the hand-built mask."""
    grid, pattern, num_text, valid = CASES["text-padded"]
    q, k, v, tm = (t.cuda() if t is not None else None for t in _inputs(grid, num_text, valid, dtype, seed=3))
    mask = hand_mask(grid, pattern, num_text, valid).cuda()
    ref = _sdpa(q.double(), k.double(), v.double(), mask)
    torch_err = (_sdpa(q, k, v, mask).double() - ref).abs().max()
    out = sa.attend(q, k, v, grid, pattern, num_text, tm)
    assert (out.double() - ref).abs().max() <= 2 * torch_err + SLACK[dtype]


@pytest.mark.parametrize("grid, pattern", [
    ((5, 7, 9), SparsePattern((1, 7, 3), (3, 1, 1), 1)),
    ((7, 3, 9), SparsePattern((1, 3, 3), (3, 1, 2), 2)),
    ((6, 4, 6), SparsePattern((3, 2, 2), (1, 3, 2), 2)),  # global frames part of a temporal tile
    ((4, 4, 4), SparsePattern((1, 1, 1), (9, 9, 9), 0)),  # dense
], ids=str)
def test_keys_per_query_counts_the_hand_mask(grid, pattern):
    n = grid[0] * grid[1] * grid[2]
    mask = hand_mask(grid, pattern)[0, :n, :n]
    assert pattern.keys_per_query(grid) == pytest.approx(mask.sum().item() / n, rel=1e-12)
