"""Sparse preview attention in a SURF call: the preview/refine attention slots (the user's processors and
backend served the preview, given back after), the processors on Wan and HunyuanVideo transformers, and
the cost model's count of the pattern. The op itself (block masks, dense equality) is tested in
tests/ops/test_sparse_attention.py."""

import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from surf_accel.integrations.accelerators import sparse_attention as sa
from surf_accel.integrations.accelerators.sparse_attention import SparsePattern
from surf_accel.ops import sparse_attention as sparse_op
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v


def test_surf_config_refuses_what_is_not_a_pattern():
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
    original = sparse_op.attend  # what the processors' custom op calls

    def attend(q, k, v, grid, pattern, *args, **kwargs):
        seen.append((tuple(grid), q.shape[1]))
        return original(q, k, v, grid, pattern, *args, **kwargs)

    monkeypatch.setattr(sparse_op, "attend", attend)
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
