"""The Wan adapter end to end: T2V and I2V, CFG on and off, batch 2, videos per prompt 2."""

import numpy as np
import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from tests.tiny_pipelines import T2V_KW, gen, i2v_kwargs, tiny_wan_i2v, tiny_wan_t2v

SMALL = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2)


@pytest.fixture(scope="module")
def i2v():
    p = tiny_wan_i2v("euler")
    yield p
    surf_accel.unpatch(p)


@pytest.fixture(scope="module")
def t2v():
    p = tiny_wan_t2v("unipc")
    yield p
    surf_accel.unpatch(p)


def _inputs_recorder(model):
    shapes = []
    handle = model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append((tuple(kw["hidden_states"].shape), kw.get("encoder_hidden_states_image")
                                        is not None)), with_kwargs=True)
    return shapes, handle


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_i2v_identity_reproduces_unpatched(i2v, guidance):
    kw = i2v_kwargs(guidance_scale=guidance)
    ref = i2v(generator=gen(0), **kw).frames
    with surf_accel.patched(i2v, SurfConfig.identity()):
        out = i2v(generator=gen(0), **kw).frames
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("batch, nvp", [(1, 1), (2, 1), (1, 2)])
def test_i2v_surf_end_to_end(i2v, guidance, batch, nvp):
    kw = i2v_kwargs(batch=batch, guidance_scale=guidance, num_videos_per_prompt=nvp, height=64, width=64)
    shapes, h = _inputs_recorder(i2v.transformer)
    try:
        with surf_accel.patched(i2v, SMALL):
            out = i2v(generator=gen(0), **kw).frames
    finally:
        h.remove()
    n = batch * nvp
    assert out.shape == (n, 5, 64, 64, 3) and np.isfinite(out).all()
    per_step = 2 if guidance > 1 else 1
    assert len(shapes) == (4 + 2) * per_step
    # condition rebuilt at every stage's resolution: 16 latent + 4 mask + 16 image-latent channels
    sizes = [s[0] for s in shapes[::per_step]]
    assert sizes == [(n, 36, 2, 4, 4)] * 2 + [(n, 36, 2, 2, 2)] * 2 + [(n, 36, 2, 8, 8)] * 2
    assert all(img for _, img in shapes)  # CLIP image embeddings at every step


def test_i2v_condition_matches_pipeline_at_each_size(i2v):
    """stage_context is the pipeline's own prepare_latents condition at that size."""
    from surf_accel.integrations.wan import WanAdapter
    from surf_accel.planner import Stage

    ad = WanAdapter()
    kw = i2v_kwargs(height=64, width=64)
    with surf_accel.patched(i2v, SMALL):
        call = ad.prepare_call(i2v, type(i2v).__mro__[1].__call__, (), {**kw, "generator": gen(0)})
    for px in (32, 64):
        stage = Stage("x", px, px, (2, px // 8, px // 8), (1.0, 0.0), 3.0, "base", "noise", 0)
        cond = ad.stage_context(i2v, call, stage)
        image = i2v.video_processor.preprocess(kw["image"], height=px, width=px).float()
        _, want = i2v.prepare_latents(image, 1, 16, px, px, 5, torch.float32, torch.device("cpu"), gen(0))
        torch.testing.assert_close(cond, want)


def test_i2v_determinism(i2v):
    kw = i2v_kwargs(height=64, width=64)
    with surf_accel.patched(i2v, SMALL):
        a = i2v(generator=gen(4), **kw).frames
        b = i2v(generator=gen(4), **kw).frames
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_t2v_end_to_end_batch_and_nvp(t2v, guidance):
    kw = {**T2V_KW, "prompt": ["a red circle", "a blue square"], "negative_prompt": ["ugly", "blurry"],
          "num_videos_per_prompt": 2, "guidance_scale": guidance, "height": 64, "width": 64}
    gens = [gen(s) for s in range(4)]  # one generator per video: each video's noise is its own
    with surf_accel.patched(t2v, SMALL):
        assert t2v(generator=gens, **kw).frames.shape == (4, 5, 64, 64, 3)
        # compared as latents: the tiny random VAE turns batch-size rounding (1e-7) into 1e-3 in a few pixels
        out = t2v(generator=[gen(s) for s in range(4)], **{**kw, "output_type": "latent"}).frames
        # video j of prompt i (each prompt's videos together) = prompt i alone with generator 2 i + j
        for v, (prompt, neg) in enumerate([("a red circle", "ugly")] * 2 + [("a blue square", "blurry")] * 2):
            one = t2v(generator=gen(v), **{**kw, "prompt": prompt, "negative_prompt": neg, "num_videos_per_prompt": 1,
                                           "output_type": "latent"}).frames
            torch.testing.assert_close(out[v], one[0], atol=1e-5, rtol=0)
        assert (out[0] - out[1]).abs().max() > 1e-2  # same prompt, other noise


def test_timestep_in_0_1000(t2v):
    seen = []
    h = t2v.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].float()),
                                                  with_kwargs=True)
    try:
        with surf_accel.patched(t2v, SMALL):
            t2v(generator=gen(0), **{**T2V_KW, "height": 64, "width": 64})
    finally:
        h.remove()
    vals = torch.cat(seen)
    assert float(vals.max()) <= 1000 and float(vals.min()) >= 0 and float(vals.max()) > 100


def test_family_spec(t2v):
    from surf_accel.integrations.wan import WanAdapter

    spec = WanAdapter().family_spec(t2v)
    assert spec.vae_scale_spatial == 8 and spec.vae_scale_temporal == 4 and spec.patch_size == (1, 2, 2)
    assert spec.optimal_area == 480 * 832 and spec.pixel_grid == 16


def test_i2v_condition_encoded_once_per_stage_size(i2v):
    """The I2V image goes through the VAE once per distinct stage size: a refine at the preview's size
    (the request as optimal size) reuses the preview's condition, and the output is unchanged by it."""
    calls = []
    original = i2v.vae.encode

    def encode(*args, **kwargs):
        calls.append(tuple(args[0].shape[-2:]))
        return original(*args, **kwargs)

    cfg = SurfConfig(optimal_size="request", preview_steps=4, switch_step=2, refine_steps=2, handoff="latent")
    i2v.vae.encode = encode
    try:
        with surf_accel.patched(i2v, cfg):
            out = i2v(generator=gen(0), **i2v_kwargs(height=64, width=64, output_type="latent")).frames
    finally:
        del i2v.vae.encode
    assert calls == [(64, 64), (32, 32)]
    from tests import surf_replay as sr

    kw = i2v_kwargs(height=64, width=64)
    with torch.no_grad():
        image_embeds = i2v.encode_image(kw["image"], torch.device("cpu"))
    cond = {"prompt_embeds": kw["prompt_embeds"], "negative_prompt_embeds": kw["negative_prompt_embeds"],
            "image": kw["image"], "image_embeds": image_embeds, "num_frames": 5}
    shift = i2v.scheduler.config.shift
    want = sr.replay(i2v, sr.WAN_I2V, sr.Recipe(optimal=(64, 64), shifts=(shift, shift / 2, shift), preview_steps=4,
                                                switch_step=2, refine_steps=2, handoff="latent"),
                     height=64, width=64, num_frames=5, num_steps=4, guidance=4.0, cond=cond, generator=gen(0))
    assert (out - want).abs().max().item() < 2e-4


def test_a_refiner_in_another_dtype_reads_the_text_in_its_own():
    """A float32 trained refiner under a bf16 pipeline (a refiner trained against a bf16 base): the
    prompt's embeddings reach it in float32 (a bf16 ``encoder_hidden_states`` into its float32 text
    embedder is a dtype error), the same values the pipeline encoded."""
    from surf_accel.refiner import Refiner
    from tests.tiny_pipelines import tiny_transformer

    pipe = tiny_wan_t2v().to(torch.bfloat16)
    ref = Refiner(tiny_transformer(), num_steps=2)
    seen = []
    ref.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["encoder_hidden_states"]),
                                              with_kwargs=True)
    cfg = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, handoff="latent")
    with surf_accel.patched(pipe, cfg, refiner=ref):
        out = pipe(**{**T2V_KW, "height": 64, "width": 64, "num_frames": 9, "output_type": "latent"},
                   generator=gen(0)).frames
    with torch.no_grad():
        emb, _ = pipe.encode_prompt(T2V_KW["prompt"], do_classifier_free_guidance=False, max_sequence_length=16)
    assert len(seen) == 2 and all(e.dtype == torch.float32 for e in seen)
    assert torch.equal(seen[0], emb.float()) and torch.isfinite(out.float()).all()
