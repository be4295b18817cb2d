"""The HunyuanVideo adapter end to end on a tiny random-weight HunyuanVideoPipeline (tiny Llama +
CLIP text encoders, word-level tokenizers, built in process)."""

import numpy as np
import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from tests.tiny_pipelines import (
    HY_KW,
    gen,
    hunyuan_embeds,
    tiny_hunyuan_t2v,
    tiny_hunyuan_transformer,
)

SMALL = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2)
BIG = {**HY_KW, "height": 64, "width": 64}  # SMALL: 32 px preview, 16 px low part, 64 px refine
CFG = {"negative_prompt": "ugly blurry", "true_cfg_scale": 3.0}


@pytest.fixture(scope="module")
def pipe():
    p = tiny_hunyuan_t2v()
    yield p
    surf_accel.unpatch(p)


def embeds_kwargs(batch=1, cfg=False, **overrides):
    kw = {k: v for k, v in {**HY_KW, **overrides}.items() if k != "prompt"}
    kw.update(hunyuan_embeds(batch, seed=1, valid=5))
    if cfg:
        kw.update(hunyuan_embeds(batch, seed=2, valid=3, negative=True), true_cfg_scale=3.0)
    return kw


def record_inputs(model):
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    return seen, handle


def run(pipe, config, kw, seed=0):
    with surf_accel.patched(pipe, config):
        return pipe(generator=gen(seed), **kw).frames


# ---------------------------------------------------------------------------- parity
@pytest.mark.parametrize("kw", [HY_KW, {**HY_KW, **CFG}, embeds_kwargs(), embeds_kwargs(batch=2, cfg=True),
                                {**HY_KW, "prompt": ["a red circle", "a blue square"], "num_videos_per_prompt": 2}],
                         ids=["prompt", "true_cfg", "embeds", "embeds_cfg_batch2", "two_prompts_nvp2"])
def test_identity_reproduces_unpatched(pipe, kw):
    ref = pipe(generator=gen(0), **kw).frames
    out = run(pipe, SurfConfig.identity(), kw)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_identity_latent_output_and_tuple(pipe):
    kw = {**HY_KW, "output_type": "latent", "return_dict": False}
    ref = pipe(generator=gen(3), **kw)[0]
    with surf_accel.patched(pipe, SurfConfig.identity()):
        out = pipe(generator=gen(3), **kw)[0]
    assert out.shape == ref.shape == (1, 4, 2, 4, 4)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cfg", [False, True])
def test_identity_is_bit_exact_in_the_pipelines_dtype(dtype, cfg):
    """The pipeline's float32-then-shift sigmas, CFG in the model dtype and the bf16 timestep after the
    first Euler step: identical latents."""
    p = tiny_hunyuan_t2v().to(dtype)
    kw = {**HY_KW, **(CFG if cfg else {}), "output_type": "latent"}
    ref = p(generator=gen(0), **kw).frames
    out = run(p, SurfConfig.identity(), kw)
    assert out.dtype == ref.dtype and torch.equal(out, ref)


def test_model_cpu_offload_hooks_run_for_every_component(monkeypatch):
    from tests.test_api import offload_recorder

    p = tiny_hunyuan_t2v()
    with surf_accel.patched(p, SMALL):
        ref = p(generator=gen(0), **BIG).frames
    p.enable_model_cpu_offload(device="cpu")
    seen = offload_recorder(monkeypatch, p, ("text_encoder", "text_encoder_2", "transformer", "vae"))
    with surf_accel.patched(p, SMALL):
        out = p(generator=gen(0), **BIG).frames
    assert seen == ["text_encoder", "text_encoder_2"] + ["transformer"] * 4 + ["vae"] * 2 + ["transformer"] * 2 + ["vae"]
    np.testing.assert_array_equal(out, ref)


def test_unpatch_parity_bit_identical(pipe):
    ref = pipe(generator=gen(0), **BIG).frames
    surfed = run(pipe, SMALL, BIG)
    after = pipe(generator=gen(0), **BIG).frames
    np.testing.assert_array_equal(after, ref)
    assert np.abs(surfed - ref).max() > 1e-3  # SURF did run
    from diffusers import HunyuanVideoPipeline

    assert type(pipe) is HunyuanVideoPipeline and not surf_accel.is_patched(pipe)


# ---------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("cfg", [False, True], ids=["embedded_guidance", "true_cfg"])
def test_end_to_end_with_text_encoders(pipe, cfg):
    kw = {**BIG, "prompt": ["a red circle", "a blue square"], "num_videos_per_prompt": 2,
          **({"negative_prompt": "ugly", "true_cfg_scale": 3.0} if cfg else {})}
    seen, h = record_inputs(pipe.transformer)
    try:
        out = run(pipe, SMALL, kw)
    finally:
        h.remove()
    assert out.shape == (4, 5, 64, 64, 3) and np.isfinite(out).all()
    per_step = 2 if cfg else 1
    assert len(seen) == (4 + 2) * per_step
    sizes = [tuple(s["hidden_states"].shape) for s in seen[::per_step]]
    assert sizes == [(4, 4, 2, 4, 4)] * 2 + [(4, 4, 2, 2, 2)] * 2 + [(4, 4, 2, 8, 8)] * 2
    for s in seen:
        assert torch.equal(s["guidance"], torch.full((4,), 6000.0))  # embedded guidance * 1000
        assert s["encoder_hidden_states"].shape == (4, 8, 16) and s["pooled_projections"].shape == (4, 8)
        assert s["encoder_attention_mask"].shape == (4, 8)
        assert 0 <= float(s["timestep"].min()) and float(s["timestep"].max()) <= 1000
    assert float(seen[0]["timestep"][0]) == pytest.approx(1000.0)
    if cfg:  # cond and uncond branches get different text
        assert not torch.equal(seen[0]["encoder_hidden_states"], seen[1]["encoder_hidden_states"])


def test_end_to_end_with_prompt_embeds_and_mask(pipe):
    kw = embeds_kwargs(batch=2, cfg=True, height=64, width=64)
    seen, h = record_inputs(pipe.transformer)
    try:
        out = run(pipe, SMALL, kw)
    finally:
        h.remove()
    assert out.shape == (2, 5, 64, 64, 3) and np.isfinite(out).all()
    assert len(seen) == (4 + 2) * 2
    # the caller's mask reaches the transformer, cond (5 valid tokens) and uncond (3) alike
    assert seen[0]["encoder_attention_mask"].sum(1).tolist() == [5, 5]
    assert seen[1]["encoder_attention_mask"].sum(1).tolist() == [3, 3]
    torch.testing.assert_close(seen[0]["pooled_projections"], kw["pooled_prompt_embeds"])


@pytest.mark.parametrize("window", [None, (1, 1, 1)], ids=["dense", "windowed"])
def test_padded_text_is_never_attended(pipe, window):
    """Changing the prompt embeddings at masked (padded) positions changes nothing, with and
    without the windowed refiner."""
    cfg = SMALL.replace(window=window)
    kw = embeds_kwargs(height=64, width=64)
    ref = run(pipe, cfg, kw)
    noisy = kw["prompt_embeds"].clone()
    noisy[:, 5:] += 100.0  # the padded positions
    out = run(pipe, cfg, {**kw, "prompt_embeds": noisy})
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
    changed = kw["prompt_embeds"].clone()
    changed[:, :5] += 1.0  # a valid token: must matter
    assert np.abs(run(pipe, cfg, {**kw, "prompt_embeds": changed}) - ref).max() > 1e-4


def test_determinism_and_seed(pipe):
    a = run(pipe, SMALL, BIG, seed=4)
    b = run(pipe, SMALL, BIG, seed=4)
    c = run(pipe, SMALL, BIG, seed=5)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_callback_sees_every_step_at_its_stage_size(pipe):
    seen = []

    def cb(p, i, t, kw):
        seen.append((i, tuple(kw["latents"].shape)))
        return {}

    run(pipe, SMALL, {**BIG, "callback_on_step_end": cb})
    assert [i for i, _ in seen] == list(range(6))
    # latents after each step: the switch step hands over the reshifted, low-resolution latent
    assert [s[-1] for _, s in seen] == [4, 2, 2, 2, 8, 8]


# ---------------------------------------------------------------------------- windows
def test_whole_grid_windows_reproduce_the_dense_refiner(pipe):
    """64 px refine: a 2 x 4 x 4 token grid. Windows covering it equal dense attention; smaller ones differ."""
    dense = run(pipe, SMALL, BIG)
    procs = {n: type(p) for n, p in pipe.transformer.attn_processors.items()}
    whole = run(pipe, SMALL.replace(window=(2, 4, 4)), BIG)
    huge = run(pipe, SMALL.replace(window=(11, 1000, 1000)), BIG)
    small = run(pipe, SMALL.replace(window=(1, 2, 2)), BIG)
    np.testing.assert_allclose(whole, dense, atol=1e-4, rtol=0)
    np.testing.assert_allclose(huge, dense, atol=1e-4, rtol=0)
    assert np.abs(small - dense).max() > 1e-3
    assert {n: type(p) for n, p in pipe.transformer.attn_processors.items()} == procs  # removed after refine


def test_whole_grid_windows_reproduce_the_transformer_with_text_mask():
    """Transformer level, the real model's patch (1, 2, 2), a batch with different text lengths."""
    from surf_accel.integrations.window_processors import windowed_attention

    model = tiny_hunyuan_transformer()
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1] * 3 + [0] * 5, [1] * 8], dtype=torch.float32)
    inputs = dict(hidden_states=torch.randn(2, 4, 3, 6, 10, generator=g), timestep=torch.tensor([700.0, 700.0]),
                  encoder_hidden_states=torch.randn(2, 8, 16, generator=g), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(2, 8, generator=g), guidance=torch.tensor([6000.0, 6000.0]),
                  return_dict=False)
    with torch.no_grad():
        ref = model(**inputs)[0]
        with windowed_attention(model, (3, 3, 5)):  # the grid is (3, 3, 5) tokens
            whole = model(**inputs)[0]
        with windowed_attention(model, (1, 3, 5)):
            temporal = model(**inputs)[0]
    torch.testing.assert_close(whole, ref, rtol=1e-4, atol=1e-5)
    assert (temporal - ref).abs().max() > 1e-3


# ---------------------------------------------------------------------------- geometry and defaults
def test_family_and_scheduler_spec(pipe):
    from surf_accel.integrations.hunyuan_video import HunyuanVideoAdapter

    ad = surf_accel.api._adapter_for(pipe)
    assert isinstance(ad, HunyuanVideoAdapter)
    spec = ad.family_spec(pipe)
    assert (spec.vae_scale_spatial, spec.vae_scale_temporal, spec.patch_size) == (8, 4, (1, 2, 2))
    assert spec.optimal_area == 720 * 1280 and spec.pixel_grid == 16 and spec.rope_max_seq_len is None
    sched = ad.scheduler_spec(pipe)
    assert (sched.kind, sched.shift, sched.grid) == ("euler", 7.0, "uniform")


def test_identity_plan_matches_the_pipelines_sigmas(pipe):
    """The planner's sigmas for the request's size are the ones the pipeline hands its scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    plan = surf_accel.api.plan_for(pipe, height=32, width=32, num_frames=5, num_inference_steps=7,
                                   config=SurfConfig.identity())
    sched = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, 8)[:-1])
    np.testing.assert_allclose(plan.stages[0].sigmas, sched.sigmas.numpy(), atol=1e-6)


def test_default_preset_is_hunyuan_paper_at_720p(pipe):
    with surf_accel.patched(pipe):
        assert surf_accel.api.get_config(pipe) == SurfConfig.preset("hunyuan-paper")
        plan = surf_accel.api.plan_for(pipe, height=720, width=1280, num_frames=129, num_inference_steps=50)
    stages = [(s.name, s.height, s.width, s.latent_size, s.steps, s.window) for s in plan.stages]
    # 720 px is not on the 32-pixel grid a factor-2 switch needs: the optimal size snaps to 704
    # the paper's plan for a 50-step call: 40 preview steps switching after 10, 10 refine steps
    assert stages == [("preview", 704, 1280, (33, 88, 160), 10, None),
                      ("preview_low", 352, 640, (33, 44, 80), 30, None),
                      ("refine", 720, 1280, (33, 90, 160), 10, (11, 1000, 1000))]
    assert [s.shift for s in plan.stages][2] == pytest.approx(7.0)


def test_refiner_transformer_runs_the_refine_stage(pipe):
    refiner = tiny_hunyuan_transformer(seed=1)
    base_seen, hb = record_inputs(pipe.transformer)
    ref_seen, hr = record_inputs(refiner)
    try:
        with surf_accel.patched(pipe, SMALL, refiner=refiner):
            pipe(generator=gen(0), **BIG)
    finally:
        hb.remove()
        hr.remove()
    assert len(base_seen) == 4 and len(ref_seen) == 2
    assert all(tuple(s["hidden_states"].shape[-2:]) == (8, 8) for s in ref_seen)


# ---------------------------------------------------------------------------- refusals
def test_unsupported_pipelines_refused():
    from diffusers import (
        HunyuanVideoFramepackPipeline,
        HunyuanVideoImageToVideoPipeline,
    )

    for cls in (HunyuanVideoImageToVideoPipeline, HunyuanVideoFramepackPipeline):
        with pytest.raises(TypeError, match="image-to-video"):
            surf_accel.patch(cls.__new__(cls))

    class NotAPipeline:
        pass

    with pytest.raises(TypeError, match="HunyuanVideoPipeline"):
        surf_accel.patch(NotAPipeline())


def test_i2v_transformer_and_schedulers_refused():
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    p = tiny_hunyuan_t2v()
    p.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=7.0)
    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler only"):
        surf_accel.patch(p)
    p.scheduler = DDIMScheduler()
    with pytest.raises(TypeError, match="supported schedulers"):
        surf_accel.patch(p)
    from diffusers import FlowMatchEulerDiscreteScheduler

    p.scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0, use_dynamic_shifting=True)
    with pytest.raises(TypeError, match="use_dynamic_shifting"):
        surf_accel.patch(p)
    p.scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    p.transformer = tiny_hunyuan_transformer(in_channels=8, image_condition_type="latent_concat")
    with pytest.raises(TypeError, match="image-to-video"):
        surf_accel.patch(p)
    assert not surf_accel.is_patched(p)


def test_bad_refiners_refused(pipe):
    from surf_accel.refiner import Refiner
    from tests.tiny_pipelines import tiny_transformer

    wan = tiny_transformer()
    with pytest.raises(TypeError, match="HunyuanVideoTransformer3DModel"):
        surf_accel.patch(pipe, SMALL, refiner=wan)
    with pytest.raises(TypeError, match="Wan-family"):
        surf_accel.patch(pipe, SMALL, refiner=Refiner(wan))
    with pytest.raises(ValueError, match="text_embed_dim"):
        surf_accel.patch(pipe, SMALL, refiner=tiny_hunyuan_transformer(text_embed_dim=24))
    assert not surf_accel.is_patched(pipe)


@pytest.mark.parametrize("overrides, error, match", [
    ({"sigmas": [1.0, 0.75, 0.5, 0.25]}, ValueError, "sigmas"),
    ({"height": 40}, ValueError, "divisible by 16"),
    ({"latents": torch.zeros(1, 4, 2, 8, 8)}, ValueError, "latents"),
    ({"num_videos_per_prompt": 0}, ValueError, "num_videos_per_prompt"),
])
def test_bad_call_arguments(pipe, overrides, error, match):
    with surf_accel.patched(pipe, SMALL), pytest.raises(error, match=match):
        pipe(generator=gen(0), **{**BIG, **overrides})


def test_embeds_need_mask_and_pooled(pipe):
    kw = embeds_kwargs()
    with surf_accel.patched(pipe, SurfConfig.identity()):
        for missing in ("prompt_attention_mask", "pooled_prompt_embeds"):
            with pytest.raises(ValueError, match=missing):
                pipe(generator=gen(0), **{k: v for k, v in kw.items() if k != missing})
        cfg = embeds_kwargs(cfg=True)
        no_mask = {k: v for k, v in cfg.items() if k != "negative_prompt_attention_mask"}
        with pytest.raises(ValueError, match="negative_prompt_attention_mask"):
            pipe(generator=gen(0), **no_mask)
        pipe(generator=gen(0), **{**no_mask, "true_cfg_scale": 1.0})  # no true CFG: negatives unused, as unpatched
        with pytest.raises(ValueError, match="rows"):
            pipe(generator=gen(0), **{**kw, "pooled_prompt_embeds": torch.zeros(3, 8)})


def test_off_grid_optimal_size_and_refine_guidance_without_cfg(pipe):
    with surf_accel.patched(pipe, SMALL.replace(optimal_size=(48, 48))):
        with pytest.raises(ValueError, match="32-pixel grid"):
            pipe(generator=gen(0), **BIG)
    with surf_accel.patched(pipe, SMALL.replace(refine_guidance=4.0)):
        with pytest.raises(ValueError, match="true_cfg_scale"):
            pipe(generator=gen(0), **BIG)  # no negative prompt: no true CFG to refine with
