"""Sparse preview attention: block masks against a hand-built mask, dense equality, and the preview/refine
attention slots of a SURF call (the user's processors and backend served the preview, given back after)."""

import pytest
import torch
import torch.nn.functional as F

import surf_accel
from surf_accel import SurfConfig
from surf_accel.integrations.accelerators import sparse_attention as sa
from surf_accel.integrations.accelerators.sparse_attention import SparsePattern
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

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
    with pytest.raises(ValueError, match="SparsePattern"):
        SurfConfig(preview_attention=(1, 2, 2))


# ---------------------------------------------------------------------------- in a SURF call
# 64 px request, 32 px optimal size: preview grid (3, 2, 2) tokens, preview_low (3, 1, 1), refine (3, 4, 4)
KW = {**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"}
CFG = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2)
PREVIEW, LOW, REFINE = 12, 3, 48  # video tokens per stage
LOCAL = SparsePattern((1, 1, 1), (1, 1, 1), 1)  # each token sees itself and the first frame
DENSE = SparsePattern((1, 1, 1), (3, 3, 3), 0)  # covers both preview grids


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan_t2v("euler")


def _record_sparse(monkeypatch):
    seen = []
    original = sa.attend

    def attend(q, k, v, grid, pattern, *args, **kwargs):
        seen.append((tuple(grid), q.shape[1]))
        return original(q, k, v, grid, pattern, *args, **kwargs)

    monkeypatch.setattr(sa, "attend", attend)
    return seen


def test_sparse_preview_serves_the_preview_only_and_rebuilds_per_resolution(pipe, monkeypatch):
    procs = {n: p for n, p in pipe.transformer.attn_processors.items()}
    with surf_accel.patched(pipe, CFG):
        plain = pipe(generator=gen(0), **KW).frames
    seen = _record_sparse(monkeypatch)
    with surf_accel.patched(pipe, CFG.replace(preview_attention=LOCAL)):
        sparse = pipe(generator=gen(0), **KW).frames
    layers = len(pipe.transformer.blocks)
    # 2 steps x 2 branches x layers at each preview resolution, in order; none at the refine's
    assert seen == [((3, 2, 2), PREVIEW)] * (4 * layers) + [((3, 1, 1), LOW)] * (4 * layers)
    assert pipe.transformer.attn_processors == procs  # the very same processor objects back
    assert not hasattr(pipe.transformer, sa.STATE_ATTR)
    seen.clear()
    with surf_accel.patched(pipe, CFG.replace(preview_attention=DENSE)):
        dense = pipe(generator=gen(0), **KW).frames
    assert len(seen) == 8 * layers
    torch.testing.assert_close(dense, plain, atol=1e-5, rtol=1e-5)  # flex (eager) vs SDPA in fp32
    # the random tiny model barely reads attention (the transformer-level test below measures the
    # pattern itself); the sparse preview still moves the result far beyond flex-vs-SDPA rounding
    assert (sparse - plain).abs().max() > 20 * (dense - plain).abs().max()


def test_user_processor_serves_the_preview_and_windows_take_the_refine(pipe):
    """A user's own attn1 processor (here a recording subclass of diffusers') keeps serving the preview;
    SURF's windows take the refine and give the same objects back; the sparse option refuses to replace it."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    class Recording(WanAttnProcessor):
        def __init__(self, log):
            super().__init__()
            self.log = log

        def __call__(self, attn, hidden_states, *args, **kwargs):
            self.log.append(hidden_states.shape[1])
            return super().__call__(attn, hidden_states, *args, **kwargs)

    log = []
    t = pipe.transformer
    originals = [b.attn1.processor for b in t.blocks]
    mine = [Recording(log) for _ in t.blocks]
    for b, p in zip(t.blocks, mine):
        b.attn1.set_processor(p)
    try:
        with surf_accel.patched(pipe, CFG.replace(window=(1, 2, 2))):
            pipe(generator=gen(0), **KW)
            assert log == [PREVIEW] * (4 * len(mine)) + [LOW] * (4 * len(mine))  # not the refine's 48 tokens
            assert [b.attn1.processor for b in t.blocks] == mine
            assert all(b.attn1.processor is p for b, p in zip(t.blocks, mine))
        with surf_accel.patched(pipe, CFG.replace(preview_attention=LOCAL)):
            with pytest.raises(ValueError, match="preview_attention=None"):
                pipe(generator=gen(0), **KW)
        assert all(b.attn1.processor is p for b, p in zip(t.blocks, mine))
    finally:
        for b, p in zip(t.blocks, originals):
            b.attn1.set_processor(p)


def test_user_attention_backend_serves_the_preview_and_is_kept(pipe, monkeypatch):
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    name = AttentionBackendName._NATIVE_MATH
    calls = []
    original = _AttentionBackendRegistry._backends[name]

    def recording(query, key, value, **kwargs):
        calls.append((query.shape[1], key.shape[1]))
        return original(query, key, value, **kwargs)

    monkeypatch.setitem(_AttentionBackendRegistry._backends, name, recording)
    # diffusers' set_attention_backend also sets the process-wide active backend, which
    # reset_attention_backend leaves set: restore it so later tests get the default again
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    t = pipe.transformer
    t.set_attention_backend(name.value)
    try:
        with surf_accel.patched(pipe, CFG.replace(window=(1, 2, 2))):
            pipe(generator=gen(0), **KW)
        self_attn = [q for q, kv in calls if q == kv]
        layers = len(t.blocks)
        # self-attention through the user's backend in the preview only (windows serve the refine's);
        # cross-attention (16 text keys) through it in every stage
        assert self_attn == [PREVIEW] * (4 * layers) + [LOW] * (4 * layers)
        assert sorted({q for q, kv in calls if kv == 16}) == [LOW, PREVIEW, REFINE]
        assert all(p._attention_backend == name for p in t.attn_processors.values())
    finally:
        t.reset_attention_backend()


def test_wan_transformer_sparse_pattern(pipe):
    model = pipe.transformer
    x = torch.randn(1, 16, 3, 10, 6, generator=gen(2))  # token grid (3, 5, 3)
    kw = dict(hidden_states=x, timestep=torch.tensor([700.0]), return_dict=False,
              encoder_hidden_states=torch.randn(1, 16, 32, generator=gen(3)))
    with torch.no_grad():
        ref = model(**kw)[0]
        with sa.sparse_attention(model, SparsePattern((1, 5, 1), (3, 1, 3), 0)):
            dense = model(**kw)[0]
        with sa.sparse_attention(model, SparsePattern((1, 1, 1), (1, 3, 1), 1)):
            local = model(**kw)[0]
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=1e-5)
    assert (local - ref).abs().max() > 1e-3, (local - ref).abs().max()


def test_hunyuan_sparse_covering_pattern_is_dense_with_padded_text():
    from tests.tiny_pipelines import hunyuan_embeds, tiny_hunyuan_transformer

    model = tiny_hunyuan_transformer()
    e = hunyuan_embeds(batch=2, valid=5)
    e["prompt_attention_mask"][1, 3:] = 0  # the second item has 3 valid text tokens
    x = torch.randn(2, 4, 3, 6, 10, generator=gen(1))  # token grid (3, 3, 5)
    kw = dict(hidden_states=x, timestep=torch.tensor([500.0, 500.0]), encoder_hidden_states=e["prompt_embeds"],
              encoder_attention_mask=e["prompt_attention_mask"], pooled_projections=e["pooled_prompt_embeds"],
              guidance=torch.tensor([6000.0, 6000.0]), return_dict=False)
    procs = dict(model.attn_processors)
    with torch.no_grad():
        ref = model(**kw)[0]
        with sa.sparse_attention(model, SparsePattern((1, 3, 5), (3, 1, 1), 0)):
            dense = model(**kw)[0]
        with sa.sparse_attention(model, SparsePattern((1, 3, 5), (1, 1, 1), 0)):
            local = model(**kw)[0]
    assert model.attn_processors == procs
    torch.testing.assert_close(dense, ref, atol=1e-5, rtol=1e-5)
    assert (local - ref).abs().max() > 1e-3


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


def test_hunyuan_surf_with_sparse_preview():
    """HunyuanVideo through SURF: a covering pattern is SURF alone; a local one still never attends
    padded text (changing the embeddings there changes nothing) while a valid token matters."""
    from tests.integrations.test_hunyuan_video import SMALL, embeds_kwargs, run
    from tests.tiny_pipelines import tiny_hunyuan_t2v

    pipe = tiny_hunyuan_t2v()
    kw = {**embeds_kwargs(height=64, width=64), "output_type": "latent"}  # preview grids (2, 2, 2), (2, 1, 1)
    plain = run(pipe, SMALL, kw)
    torch.testing.assert_close(run(pipe, SMALL.replace(preview_attention=DENSE), kw), plain, atol=1e-5, rtol=1e-5)
    cfg = SMALL.replace(preview_attention=LOCAL)
    ref = run(pipe, cfg, kw)
    noisy = kw["prompt_embeds"].clone()
    noisy[:, 5:] += 100.0  # the padded positions
    torch.testing.assert_close(run(pipe, cfg, {**kw, "prompt_embeds": noisy}), ref, atol=1e-5, rtol=0)
    changed = kw["prompt_embeds"].clone()
    changed[:, :5] += 1.0
    assert (run(pipe, cfg, {**kw, "prompt_embeds": changed}) - ref).abs().max() > 1e-4


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


def test_cost_model_counts_the_sparse_preview():
    from surf_accel.catalogue import MODELS, estimate
    from surf_accel.cost_model import forward_flops

    spec = MODELS["wan2.1-14b"]
    latent = (21, 60, 104)  # 480x832, 81 frames: token grid (21, 30, 52)
    dense = forward_flops(spec, latent)
    assert forward_flops(spec, latent, sparse=SparsePattern((1, 1, 1), (99, 99, 99), 0)) == dense
    pattern = SparsePattern((3, 5, 13), (3, 3, 3), 1)
    sparse = forward_flops(spec, latent, sparse=pattern)
    L = 21 * 30 * 52
    K = pattern.keys_per_query((21, 30, 52))
    cross = spec.num_layers * 2 * 2 * L * spec.text_len * spec.dim
    assert sparse["linear"] == dense["linear"]
    assert sparse["attention"] - cross == pytest.approx((dense["attention"] - cross) * K / L, rel=1e-12)
    # only the preview stages change: the refine is the same with or without the pattern
    cfg = SurfConfig.preset("paper").replace(window=(4, 1000, 1000))
    a, b = (estimate("wan2.1-14b", 720, 1280, 81, c) for c in (cfg, cfg.replace(preview_attention=pattern)))
    assert [s.attention < t.attention for s, t in zip(b.surf, a.surf)] == [True, True, False]
    assert b.surf[2].attention == a.surf[2].attention and b.speedup > a.speedup
