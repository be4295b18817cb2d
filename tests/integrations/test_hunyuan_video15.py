"""The HunyuanVideo-1.5 adapter end to end on tiny random-weight HunyuanVideo15Pipeline /
HunyuanVideo15ImageToVideoPipeline built in process (tests/tiny_pipelines.py), with the pipeline's
ClassifierFreeGuidance guider. The SURF run itself is checked against a hand replay in
tests/test_surf_replay_hunyuan15.py."""

import copy

import numpy as np
import pytest
import torch

import surf_accel
import surf_accel.api
from surf_accel import SurfConfig
from tests.tiny_pipelines import gen, hv15_kwargs, tiny_hv15, tiny_hv15_transformer, tiny_image

# 128 px request: a 64 px preview (4x4 latents), 32 px after the switch, the refine at 128 px
SMALL = SurfConfig(optimal_size=(64, 64), preview_steps=4, switch_step=2, refine_steps=2)
BIG = dict(height=128, width=128)


@pytest.fixture(scope="module")
def t2v():
    p = tiny_hv15()
    yield p
    surf_accel.unpatch(p)


@pytest.fixture(scope="module")
def i2v():
    p = tiny_hv15(i2v=True)
    p.transformer.register_to_config(target_size=128)  # the pipeline sizes I2V calls from this: 128x128
    p.target_size = 128
    yield p
    surf_accel.unpatch(p)


def i2v_kwargs(**overrides):
    kw = hv15_kwargs(image=tiny_image(96, 96), **overrides)
    kw.pop("height"), kw.pop("width")
    return kw


def run(pipe, config, kw, seed=0):
    with surf_accel.patched(pipe, config):
        out = pipe(generator=gen(seed), **kw)
    return out.frames if kw.get("return_dict", True) else out[0]


def with_guider(pipe, **guider_kwargs):
    """A shallow copy of ``pipe`` (same modules) with its own ClassifierFreeGuidance."""
    from diffusers import ClassifierFreeGuidance

    p = copy.copy(pipe)
    p.register_modules(guider=ClassifierFreeGuidance(**guider_kwargs))
    return p


# ---------------------------------------------------------------------------- identity
GUIDERS = {
    "cfg": dict(guidance_scale=4.0),
    "rescale-start-stop": dict(guidance_scale=5.0, guidance_rescale=0.7, start=0.25, stop=0.75),
    "original-formulation": dict(guidance_scale=2.0, use_original_formulation=True),
    "disabled": dict(guidance_scale=4.0, enabled=False),  # a guidance-distilled checkpoint's guider
}


@pytest.mark.parametrize("guider", list(GUIDERS), ids=list(GUIDERS))
def test_identity_is_bit_exact_with_every_guider_setting(t2v, guider):
    """torch.equal against the unpatched call, latents and decoded frames: the guider's per-step state
    (start/stop count steps), its combine (rescale, formulation) and the disabled guider's single pass."""
    pipe = with_guider(t2v, **GUIDERS[guider])
    kw = hv15_kwargs(num_inference_steps=4, output_type="latent")
    ref = pipe(generator=gen(0), **kw).frames
    out = run(pipe, SurfConfig.identity(), kw)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_identity_is_bit_exact_in_the_pipelines_dtype(dtype):
    """bf16: the first noise drawn in the transformer's dtype, the timestep cast to it, the guider's
    combine and the Euler step in the pipeline's dtypes; frames decoded as the pipeline decodes them."""
    pipe = tiny_hv15().to(dtype)

    def kwargs(batch):
        kw = hv15_kwargs(batch=batch)
        return {k: v.to(dtype) if k.endswith(("embeds", "embeds_2")) else v for k, v in kw.items()}

    kw = kwargs(1)  # (decoding a batch needs pipe.vae.enable_slicing(): test_batches_need_vae_slicing)
    ref = pipe(generator=gen(0), **kw).frames
    out = run(pipe, SurfConfig.identity(), kw)
    assert out.dtype == ref.dtype and np.array_equal(out, ref)
    lat = dict(kwargs(2), output_type="latent")
    ref_lat = pipe(generator=gen(0), **lat).frames
    out_lat = run(pipe, SurfConfig.identity(), lat)
    assert out_lat.dtype == ref_lat.dtype == dtype and torch.equal(out_lat, ref_lat)


def test_identity_i2v_bit_exact_and_sized_by_the_image(i2v):
    """I2V: no height/width argument; the pipeline sizes the call from the image (96x96 -> its 128-px
    square bucket) and resizes the image to it; SigLIP states and the first-frame condition as it builds them."""
    kw = i2v_kwargs(output_type="latent")
    ref = i2v(generator=gen(0), **kw).frames
    out = run(i2v, SurfConfig.identity(), kw)
    assert torch.equal(out, ref)
    assert tuple(out.shape[-2:]) == (8, 8)


def test_identity_default_size_tuple_output_and_caller_latents(t2v):
    """height/width None: the pipeline's 16:9 bucket of its target_size; return_dict=False; the caller's
    latents (a float64 tensor, rounded to the pipeline's dtype as prepare_latents does)."""
    kw = hv15_kwargs(height=None, width=None, output_type="latent", return_dict=False)
    ref = t2v(generator=gen(0), **kw)[0]
    out = run(t2v, SurfConfig.identity(), kw)
    assert torch.equal(out, ref) and ref.shape[-1] > ref.shape[-2]  # landscape
    latents = torch.randn(ref.shape, generator=gen(3), dtype=torch.float64)
    ref = t2v(latents=latents, **kw)[0]
    assert torch.equal(run(t2v, SurfConfig.identity(), dict(kw, latents=latents)), ref)


def test_unpatch_restores_the_pipeline_bit_for_bit(t2v):
    kw = hv15_kwargs(output_type="latent", **BIG)
    cls = type(t2v)
    before = t2v(generator=gen(1), **kw).frames
    surf = run(t2v, SMALL, kw, seed=1)
    assert type(t2v) is cls and not surf_accel.api.is_patched(t2v)
    after = t2v(generator=gen(1), **kw).frames
    assert torch.equal(before, after)
    assert (surf - before).abs().max() > 1e-3  # the SURF call was not the pipeline's


# ---------------------------------------------------------------------------- the guider per step
def test_guider_state_and_cache_contexts_follow_the_whole_surf_call(t2v):
    """A SURF call of 4 preview + 2 refine steps: the guider gets (global step, 6 steps, t) every step;
    with start=0.25, stop=0.75 CFG runs at steps 1..3 only (int(0.25 * 6) = 1, int(0.75 * 6) = 4), and
    each pass runs inside the cache context the guider names ("pred_cond", "pred_uncond")."""
    pipe = with_guider(t2v, guidance_scale=5.0, start=0.25, stop=0.75)
    states, contexts = [], []
    guider, model = pipe.guider, pipe.transformer
    set_state, cache_context = guider.set_state, model.cache_context

    def record_state(step, num_inference_steps, timestep):
        if timestep is not None:  # (the adapter's probe of a copy before the call: timestep None)
            states.append((step, num_inference_steps, float(timestep)))
        return set_state(step=step, num_inference_steps=num_inference_steps, timestep=timestep)

    def record_context(name, **step_fields):  # SURF also passes the stage's step fields (the stage protocol)
        contexts.append(name)
        return cache_context(name, **step_fields)

    guider.set_state, model.cache_context = record_state, record_context
    try:
        with surf_accel.patched(pipe, SMALL):
            pipe(generator=gen(0), **hv15_kwargs(**BIG))
            plan = pipe._surf_last_plan
    finally:
        del guider.set_state, model.cache_context
    sigmas = [s for st in plan.stages for s in st.sigmas[:-1]]
    assert [(s, n) for s, n, _ in states] == [(i, 6) for i in range(6)]
    np.testing.assert_allclose([t for _, _, t in states], np.float32(sigmas) * 1000, rtol=1e-6)
    want = []
    for i in range(6):
        want += ["pred_cond", "pred_uncond"] if 1 <= i < 4 else ["pred_cond"]
    assert contexts == want


def test_refine_guidance_runs_a_guider_copy_with_that_scale(t2v):
    """refine_guidance=1: the refine's two steps run the cond branch only; the pipeline's guider keeps
    its scale; the preview still runs both branches."""
    seen = []
    handle = t2v.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["hidden_states"].shape[-1]), with_kwargs=True)
    try:
        run(t2v, SMALL.replace(refine_guidance=1.0), hv15_kwargs(**BIG))
    finally:
        handle.remove()
    assert seen == [4] * 4 + [2] * 4 + [8] * 2  # 2 passes per preview step, 1 per refine step
    assert t2v.guider.guidance_scale == 4.0


def test_negative_branch_needs_cfg_and_refine_guidance_without_it_is_refused(t2v):
    pipe = with_guider(t2v, guidance_scale=4.0, enabled=False)
    kw = hv15_kwargs(cfg=False, **BIG)
    out = run(pipe, SMALL, kw)  # one pass per step: no negative embeddings needed
    assert out.shape == (1, 5, 128, 128, 3)
    with pytest.raises(ValueError, match="HunyuanVideo-1.5: an enabled guider"):
        run(pipe, SMALL.replace(refine_guidance=3.0), kw)


# ---------------------------------------------------------------------------- text and conditioning
def test_text_reaches_the_transformer_once_encoded_with_masks(t2v, monkeypatch):
    """encode_prompt once per branch per call; every pass gets its branch's Qwen and ByT5 states and masks."""
    calls, seen = [], []
    encode = t2v.encode_prompt
    monkeypatch.setattr(t2v, "encode_prompt", lambda **kw: calls.append(kw["prompt_embeds"]) or encode(**kw))
    handle = t2v.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(dict(kw)), with_kwargs=True)
    kw = hv15_kwargs(batch=2, output_type="latent", **BIG)
    try:
        run(t2v, SMALL.replace(handoff="latent"), kw)  # (no VAE pass: a batch needs enable_slicing otherwise)
    finally:
        handle.remove()
    assert len(calls) == 2 and calls[0] is kw["prompt_embeds"] and calls[1] is kw["negative_prompt_embeds"]
    assert len(seen) == 2 * 6
    for i, s in enumerate(seen):
        p = "negative_" if i % 2 else ""
        torch.testing.assert_close(s["encoder_hidden_states"], kw[f"{p}prompt_embeds"], rtol=0, atol=0)
        torch.testing.assert_close(s["encoder_hidden_states_2"], kw[f"{p}prompt_embeds_2"], rtol=0, atol=0)
        assert s["encoder_attention_mask"].sum(1).tolist() == ([3, 3] if p else [5, 5])
        assert s["encoder_attention_mask_2"].sum(1).tolist() == ([1, 1] if p else [2, 2])
        assert not s["image_embeds"].any() and s["image_embeds"].shape == (2, 729, 8)
        assert s["hidden_states"].shape[1] == 9 and not s["hidden_states"][:, 4:].any()  # T2V: zero condition


def test_i2v_condition_is_the_image_at_each_stage_size(i2v):
    """Every pass's condition channels hold the image encoded at that stage's size (the 128 px crop
    resized, encoded by hand here) at frame 0 and zeros after; the mask channel marks frame 0."""
    seen = []
    handle = i2v.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"]),
                                                       with_kwargs=True)
    try:
        run(i2v, SMALL, i2v_kwargs())
    finally:
        handle.remove()
    from PIL import Image

    crop = i2v.video_processor.resize(tiny_image(96, 96), height=128, width=128, resize_mode="crop")
    by_size = {}
    for x in seen:
        by_size.setdefault(x.shape[-1], x)
    assert sorted(by_size) == [2, 4, 8]  # 32, 64, 128 px
    for lw, x in by_size.items():
        px = lw * 16
        img = crop if px == 128 else crop.resize((px, px), resample=Image.LANCZOS)  # the processor's resample
        t = i2v.video_processor.preprocess(img, height=px, width=px).unsqueeze(2)
        z = i2v.vae.encode(t).latent_dist.mode() * i2v.vae.config.scaling_factor
        torch.testing.assert_close(x[:, 4:8, :1], z, rtol=1e-5, atol=1e-5)
        assert not x[:, 4:8, 1:].any()
        assert torch.equal(x[:, 8, 0], torch.ones_like(x[:, 8, 0])) and not x[:, 8, 1:].any()


def test_i2v_image_is_encoded_through_the_vae_once_per_stage_size(i2v, monkeypatch):
    encode = i2v.vae.encode
    sizes = []
    monkeypatch.setattr(i2v.vae, "encode", lambda x, *a, **k: sizes.append(tuple(x.shape[-2:])) or encode(x, *a, **k))
    run(i2v, SMALL.replace(handoff="latent"), i2v_kwargs())
    assert sizes == [(64, 64), (32, 32), (128, 128)]


# ---------------------------------------------------------------------------- windows
def test_whole_grid_windows_reproduce_the_dense_refine(t2v):
    """128 px refine: a 2 x 8 x 8 token grid; windows covering it equal dense attention (with the
    Qwen, ByT5 and 729 masked image tokens); smaller windows differ; processors restored after."""
    kw = hv15_kwargs(**BIG)
    procs = {n: type(p) for n, p in t2v.transformer.attn_processors.items()}
    dense = run(t2v, SMALL, kw)
    whole = run(t2v, SMALL.replace(window=(2, 8, 8)), kw)
    small = run(t2v, SMALL.replace(window=(1, 4, 4)), kw)
    np.testing.assert_allclose(whole, dense, atol=1e-4, rtol=0)
    assert np.abs(small - dense).max() > 1e-3
    assert {n: type(p) for n, p in t2v.transformer.attn_processors.items()} == procs


@pytest.mark.parametrize("image", [False, True], ids=["t2v-zero-image", "i2v-image"])
def test_whole_grid_windows_reproduce_the_transformer_with_text_masks(image):
    """Transformer level, a batch with different Qwen and ByT5 lengths: whole-grid windows equal the
    dense joint attention; the valid-text count includes the image tokens only when they are not zero."""
    from surf_accel.integrations.window_processors import STATE_ATTR, windowed_attention

    model = tiny_hv15_transformer()
    g = torch.Generator().manual_seed(0)
    inputs = dict(hidden_states=torch.randn(2, 9, 3, 6, 10, generator=g), timestep=torch.tensor([700.0, 700.0]),
                  encoder_hidden_states=torch.randn(2, 8, 16, generator=g),
                  encoder_attention_mask=torch.tensor([[1.0] * 3 + [0.0] * 5, [1.0] * 8]),
                  encoder_hidden_states_2=torch.randn(2, 4, 8, generator=g),
                  encoder_attention_mask_2=torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 1, 0]]),
                  image_embeds=torch.randn(2, 5, 8, generator=g) if image else torch.zeros(2, 7, 8),
                  return_dict=False)
    with torch.no_grad():
        ref = model(**inputs)[0]
        with windowed_attention(model, (3, 6, 10)):
            whole = model(**inputs)[0]
            lengths = getattr(model, STATE_ATTR).text_lengths
        with windowed_attention(model, (1, 6, 10)):
            temporal = model(**inputs)[0]
    torch.testing.assert_close(whole, ref, rtol=1e-4, atol=1e-5)
    assert (temporal - ref).abs().max() > 1e-2
    assert lengths == ((3 + 1 + 5, 8 + 3 + 5) if image else (3 + 1, 8 + 3))


# ---------------------------------------------------------------------------- geometry and defaults
def test_family_scheduler_and_default_preset(t2v):
    from surf_accel.integrations.hunyuan_video15 import HunyuanVideo15Adapter

    ad = surf_accel.api._adapter_for(t2v)
    assert isinstance(ad, HunyuanVideo15Adapter) and ad.default_preset == "paper"
    spec = ad.family_spec(t2v)
    assert (spec.vae_scale_spatial, spec.vae_scale_temporal, spec.patch_size) == (16, 4, (1, 1, 1))
    assert spec.optimal_area == 64 * 64 and spec.pixel_grid == 16  # the tiny transformer's target_size 64
    sched = ad.scheduler_spec(t2v)
    assert (sched.kind, sched.shift, sched.grid) == ("euler", 5.0, "uniform")
    assert "HunyuanVideo15Pipeline" in surf_accel.api.supported_pipelines()


@pytest.mark.parametrize("target, request_hw, preview", [(640, (720, 1280), (480, 864)), (960, (720, 1280), (704, 1280)),
                                                          (960, (1088, 1920), (736, 1280))])
def test_optimal_size_per_checkpoint(t2v, target, request_hw, preview):
    """The 480p checkpoints (target_size 640) preview at their 480p bucket, the 720p ones (960) at 720p;
    with a factor-2 switch on the 32-px grid."""
    from diffusers.configuration_utils import FrozenDict

    pipe = copy.copy(t2v)
    pipe.transformer = copy.copy(t2v.transformer)
    pipe.transformer._internal_dict = FrozenDict(t2v.transformer.config, target_size=target)
    plan = surf_accel.api.plan_for(pipe, height=request_hw[0], width=request_hw[1], num_frames=121,
                               num_inference_steps=50, config=SurfConfig.preset("paper"))
    assert (plan.stages[0].height, plan.stages[0].width) == preview
    assert plan.stages[1].latent_size == (31, preview[0] // 32, preview[1] // 32)


def test_windows_preset_windows_only_the_refine(t2v):
    """hunyuan15-windows: the paper's plan (40 + 10 of 50 steps) with 8-frame temporal windows on the
    refine stage alone; the family's default stays the dense paper plan."""
    from diffusers.configuration_utils import FrozenDict

    pipe = copy.copy(t2v)
    pipe.transformer = copy.copy(t2v.transformer)
    pipe.transformer._internal_dict = FrozenDict(t2v.transformer.config, target_size=640)
    plan = surf_accel.api.plan_for(pipe, height=720, width=1280, num_frames=121, num_inference_steps=50,
                                   config=SurfConfig.preset("hunyuan15-windows"))
    assert [(s.name, s.steps, s.window) for s in plan.stages] == [
        ("preview", 10, None), ("preview_low", 30, None), ("refine", 10, (8, 1000, 1000))]
    assert SurfConfig.preset(surf_accel.api._adapter_for(t2v).default_preset).window is None


def test_identity_plan_matches_the_pipelines_sigmas(t2v):
    """The planner's sigmas for the identity config are the pipeline scheduler's, bit for bit
    (HunyuanVideo15Pipeline hands it linspace(1, 0, n + 1)[:-1] to shift)."""
    for n in (4, 7, 50):
        sched = type(t2v.scheduler).from_config(t2v.scheduler.config)
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, n + 1)[:-1])
        plan = surf_accel.api.plan_for(t2v, height=64, width=64, num_frames=5, num_inference_steps=n,
                                   config=SurfConfig.identity())
        assert np.array_equal(np.float32(plan.stages[0].sigmas), sched.sigmas.numpy())


def test_refiner_transformer_runs_the_refine_stage(t2v):
    ref = tiny_hv15_transformer(seed=1)
    base_seen, ref_seen = [], []
    h1 = t2v.transformer.register_forward_pre_hook(lambda m, a, kw: base_seen.append(1), with_kwargs=True)
    h2 = ref.register_forward_pre_hook(lambda m, a, kw: ref_seen.append(kw["hidden_states"].shape), with_kwargs=True)
    try:
        with surf_accel.patched(t2v, SMALL, refiner=ref):
            t2v(generator=gen(0), **hv15_kwargs(**BIG))
    finally:
        h1.remove(), h2.remove()
    assert len(base_seen) == 8 and len(ref_seen) == 4 and all(s[-1] == 8 for s in ref_seen)


# ---------------------------------------------------------------------------- refusals
def test_unsupported_guiders_refused(t2v):
    from diffusers import AdaptiveProjectedGuidance, ClassifierFreeGuidance

    class MyCFG(ClassifierFreeGuidance):
        pass

    for guider in (AdaptiveProjectedGuidance(guidance_scale=4.0), MyCFG(guidance_scale=4.0)):
        p = copy.copy(t2v)
        p.register_modules(guider=guider)
        with pytest.raises(TypeError, match="ClassifierFreeGuidance guider only.*pipe.guider"):
            surf_accel.patch(p)


def test_bad_pipelines_schedulers_and_refiners_refused(t2v, i2v):
    from diffusers import UniPCMultistepScheduler

    from surf_accel import Refiner
    from tests.tiny_pipelines import tiny_hunyuan_transformer, tiny_transformer

    p = copy.copy(t2v)
    p.register_modules(scheduler=UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"))
    with pytest.raises(TypeError, match="FlowMatchEulerDiscreteScheduler only"):
        surf_accel.patch(p)
    p = copy.copy(t2v)
    p.register_modules(transformer=tiny_hunyuan_transformer())
    with pytest.raises(TypeError, match="HunyuanVideo15Transformer3DModel"):
        surf_accel.patch(p)
    p = copy.copy(i2v)
    p.register_modules(transformer=tiny_hv15_transformer(use_meanflow=True))
    with pytest.raises(TypeError, match="use_meanflow"):
        surf_accel.patch(p)
    with pytest.raises(TypeError, match="Wan-family"):
        surf_accel.patch(t2v, SMALL, refiner=Refiner(tiny_transformer()))
    with pytest.raises(ValueError, match="text_embed_2_dim"):
        surf_accel.patch(t2v, SMALL, refiner=tiny_hv15_transformer(text_embed_2_dim=4))
    assert not surf_accel.api.is_patched(t2v)


def test_batches_need_vae_slicing():
    """diffusers' HunyuanVideo-1.5 VAE fails on a batch (unpatched too): a clear error naming the fix;
    with enable_slicing a two-video SURF call decodes each video as a one-video call does."""
    pipe = tiny_hv15()
    kw = hv15_kwargs(batch=2, **BIG)
    with pytest.raises(ValueError, match="enable_slicing"):
        run(pipe, SMALL, kw)
    pipe.vae.enable_slicing()
    both = run(pipe, SMALL, dict(kw, output_type="latent"))
    frames = run(pipe, SMALL, kw)
    assert frames.shape == (2, 5, 128, 128, 3)
    with torch.no_grad():
        one = pipe.vae.decode(both[:1] / pipe.vae.config.scaling_factor, return_dict=False)[0]
    np.testing.assert_allclose(frames[0], pipe.video_processor.postprocess_video(one, output_type="np")[0],
                               atol=1e-5, rtol=0)


def test_bad_call_arguments(t2v):
    with surf_accel.patched(t2v, SMALL):
        with pytest.raises(ValueError, match="`sigmas` argument"):
            t2v(**hv15_kwargs(sigmas=[1.0, 0.5]))
        with pytest.raises(ValueError, match="prompt_embeds_mask"):
            t2v(**hv15_kwargs(prompt_embeds_mask=None))
        with pytest.raises(ValueError, match="16-pixel grid"):
            t2v(**hv15_kwargs(height=72, width=64))


# ---------------------------------------------------------------------------- text encoders and the CLI
def test_end_to_end_with_text_encoders_and_a_quoted_glyph_prompt():
    """Prompts through the pipeline's own Qwen2.5-VL and ByT5 encoding (the quoted text goes to ByT5):
    identity bit-exact, and a SURF call that encodes each branch once."""
    pipe = tiny_hv15(text_encoders=True)
    pipe.tokenizer_max_length = 16  # (instead of 1000 padded Qwen tokens; the template below has no prefix to crop)
    pipe.prompt_template_encode_start_idx = 0
    kw = dict(prompt='a red circle "hi"', negative_prompt="ugly", height=64, width=64, num_frames=5,
              num_inference_steps=2, output_type="latent")
    ref = pipe(generator=gen(0), **kw).frames
    assert torch.equal(run(pipe, SurfConfig.identity(), kw), ref)
    calls = []
    forward = pipe.text_encoder.forward
    pipe.text_encoder.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    run(pipe, SMALL, dict(kw, num_inference_steps=4, **BIG))
    assert len(calls) == 2  # the prompt and the negative prompt, once each for all stages


def test_cli_generate_local_folder(tmp_path, capsys, monkeypatch):
    """`surf-accel generate FOLDER` on a saved HunyuanVideo15Pipeline: --guidance becomes the guider's
    guidance_scale (the pipeline has no guidance_scale argument); the plan goes to stderr."""
    from diffusers import ClassifierFreeGuidance

    from surf_accel import cli

    scales = []
    new = ClassifierFreeGuidance.new
    monkeypatch.setattr(ClassifierFreeGuidance, "new", lambda self, **kw: scales.append(kw) or new(self, **kw))

    model = tmp_path / "hv15"
    tiny_hv15(text_encoders=True).save_pretrained(model)
    out = tmp_path / "v.mp4"
    rc = cli.main(["generate", str(model), "--prompt", "a red circle", "--height", "64", "--width", "64",
                   "--frames", "5", "--steps", "4", "--guidance", "3.0", "--dtype", "float32", "--device", "cpu",
                   "--output", str(out)])
    assert rc == 0 and out.exists() and out.stat().st_size > 0
    err = capsys.readouterr().err
    assert "preview" in err and "refine" in err
    assert scales == [{"guidance_scale": 3.0}]


# ---------------------------------------------------------------------------- cost model
def test_forward_flops_match_the_flop_counter():
    """Linear and attention FLOPs of HunyuanVideo15Spec against torch's counter on a tiny
    HunyuanVideo15Transformer3DModel (math SDPA: the counter sees the joint-attention matmuls over
    72 video + 8 Qwen + 4 ByT5 + 5 image tokens, and the refiner's over the 8 Qwen tokens)."""
    import dataclasses

    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from surf_accel.cost_model import HunyuanVideo15Spec, forward_flops

    tr = tiny_hv15_transformer(mlp_ratio=4.0)  # (the token refiner's MLP ratio is fixed at 4 in diffusers)
    spec = dataclasses.replace(HunyuanVideo15Spec.from_config(tr.config, text_len=8), text_2_len=4, image_len=5)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
        tr(hidden_states=torch.randn(1, 9, 3, 4, 6), timestep=torch.tensor([500.0]),
           encoder_hidden_states=torch.randn(1, 8, 16), encoder_attention_mask=torch.ones(1, 8),
           encoder_hidden_states_2=torch.randn(1, 4, 8), encoder_attention_mask_2=torch.ones(1, 4),
           image_embeds=torch.randn(1, 5, 8))
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    fl = forward_flops(spec, (3, 4, 6))
    assert fl["linear"] == counts["aten.addmm"] + counts["aten.convolution"]
    assert fl["attention"] == counts["aten.bmm"] == 2 * 4 * 89 * 89 * 16 + 4 * 8 * 8 * 16


def test_spec_is_the_published_8b_config_and_the_estimate_cli(capsys):
    """MODELS['hunyuanvideo-1.5-*'] is HunyuanVideo15Transformer3DModel()'s defaults (the published
    config); the 480p/720p entries differ only in the optimal size the estimate plans with."""
    from diffusers import HunyuanVideo15Transformer3DModel

    from surf_accel import cli
    from surf_accel.catalogue import FAMILIES, MODELS
    from surf_accel.cost_model import HunyuanVideo15Spec

    with torch.device("meta"):
        model = HunyuanVideo15Transformer3DModel()
    for res in ("480p", "720p"):
        name = f"hunyuanvideo-1.5-{res}"
        assert MODELS[name] == HunyuanVideo15Spec.from_config(model.config, name=name, family=name)
    spec = MODELS["hunyuanvideo-1.5-480p"]
    blocks = sum(p.numel() for b in model.transformer_blocks for p in b.parameters())
    assert spec.params == pytest.approx(blocks, rel=1e-3)  # weights (biases left out)
    assert 8.2e9 < sum(p.numel() for p in model.parameters()) < 8.4e9
    assert [FAMILIES[f"hunyuanvideo-1.5-{r}"].family.optimal_area for r in ("480p", "720p")] == [640 ** 2, 960 ** 2]
    assert cli.main(["estimate", "--model", "hunyuanvideo-1.5-480p", "--height", "720", "--width", "1280"]) == 0
    out = capsys.readouterr().out
    assert "preview      480x864" in out and "121 frames" in out and "predicted speedup" in out
