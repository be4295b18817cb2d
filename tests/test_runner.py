"""The stage loop on tiny random-weight Wan T2V pipelines."""

import numpy as np
import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

SMALL = SurfConfig(optimal_size=(32, 32), preview_steps=6, switch_step=2, refine_steps=2, refine_start=0.6)


@pytest.fixture(scope="module", params=["euler", "unipc"])
def pipe(request):
    p = tiny_wan_t2v(request.param)
    yield p
    surf_accel.unpatch(p)


def _run(p, config, seed=0, **kw):
    args = {**T2V_KW, **kw}
    with surf_accel.patched(p, config):
        return p(generator=gen(seed), **args).frames


@pytest.mark.parametrize("kw", [
    dict(),
    dict(guidance_scale=1.0),
    dict(prompt=["a red circle", "a blue square"], negative_prompt=["ugly", "blurry"], num_videos_per_prompt=2),
    dict(output_type="latent"),
])
def test_identity_config_reproduces_unpatched(pipe, kw):
    args = {**T2V_KW, **kw}
    ref = pipe(generator=gen(0), **args).frames
    out = _run(pipe, SurfConfig.identity(), **kw)
    ref, out = np.asarray(ref), np.asarray(out)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["euler", "unipc"])
def test_identity_is_bit_exact_in_the_pipelines_dtype(kind, dtype):
    """CFG in the model dtype, the scheduler's own step and cast: identical latents, bit for bit (the
    runner's float32 arithmetic differed by 0.006-0.10 in bf16)."""
    p = tiny_wan_t2v(kind).to(dtype)
    kw = {**T2V_KW, "output_type": "latent", "num_inference_steps": 5}
    ref = p(generator=gen(3), **kw).frames
    out = _run(p, SurfConfig.identity(), seed=3, **{k: v for k, v in kw.items() if k not in T2V_KW or
                                                    T2V_KW[k] != v})
    assert out.dtype == ref.dtype  # Euler casts latents to the model dtype after each step, UniPC keeps float32
    assert torch.equal(out, ref)


def test_float32_step_precision_keeps_float32_latents():
    """The option the docs describe: latents float32 between steps, so a bf16 model's run differs from
    the pipeline's (bf16) arithmetic, by about bf16's resolution."""
    p = tiny_wan_t2v("euler").to(torch.bfloat16)
    kw = {**T2V_KW, "output_type": "latent"}
    ref = p(generator=gen(3), **kw).frames
    out = _run(p, SurfConfig.identity().replace(step_precision="float32"), seed=3, output_type="latent")
    assert out.dtype == torch.float32
    err = (out - ref.float()).abs().max().item()
    assert 0 < err < 0.2


def test_determinism_and_seed_dependence(pipe):
    a = _run(pipe, SMALL, seed=1, height=32, width=32)
    b = _run(pipe, SMALL, seed=1, height=32, width=32)
    c = _run(pipe, SMALL, seed=2, height=32, width=32)
    assert a.shape == (1, 5, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


def test_non_integer_latent_factor_resizes_the_preview(pipe):
    """48x64 from a 32x64 optimal size: the latent handoff resizes 1.5 x 1 (no fused upsample) and the
    refine starts from (1 - s*) z_lr + s* eps with z_lr that resized preview (the replay oracle covers
    every other variant, tests/test_surf_replay.py)."""
    from surf_accel.planner import Stage
    from surf_accel.refiner import handoff

    stage = Stage("refine", 48, 64, (2, 6, 8), (0.6, 0.0), 3.0, "base", "handoff", 0)
    z = torch.randn(1, 16, 2, 2, 4, generator=gen(0))
    noise = torch.randn(1, 16, 2, 6, 8, generator=gen(1))
    out = handoff(pipe, None, z, stage, SMALL.replace(handoff="latent"), noise, 0.6)
    want = 0.4 * torch.nn.functional.interpolate(z, size=(2, 6, 8), mode="trilinear", align_corners=False) + 0.6 * noise
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-6)
    frames = _run(pipe, SMALL.replace(handoff="latent", optimal_size=(32, 64)), height=48, width=64)
    assert frames.shape == (1, 5, 48, 64, 3)


def test_refine_zero_outputs_preview(pipe):
    out = _run(pipe, SMALL.replace(refine_steps=0), height=32, width=32)
    assert out.shape == (1, 5, 16, 16, 3)  # the low-resolution preview, decoded at its own size


def test_callback_sees_every_step_with_stage_shapes(pipe):
    seen = []

    def cb(p, i, t, kwargs):
        seen.append((i, tuple(kwargs["latents"].shape[-2:])))
        return {"latents": kwargs["latents"]}

    _run(pipe, SMALL, height=32, width=32, callback_on_step_end=cb)
    assert [i for i, _ in seen] == list(range(8))
    # step 0 at 32 px (latent 4), step 1 ends in the reshift (latent 2), then low res, then refine (latent 4)
    assert [s for _, s in seen] == [(4, 4)] + [(2, 2)] * 5 + [(4, 4)] * 2
    assert pipe.num_timesteps == 8


def test_callback_can_change_latents(pipe):
    def zero(p, i, t, kwargs):
        return {"latents": torch.zeros_like(kwargs["latents"])}

    a = _run(pipe, SurfConfig.identity(), output_type="latent", callback_on_step_end=zero)
    assert float(a.abs().max()) == 0.0


def test_pipeline_scheduler_untouched(pipe):
    before = {k: v for k, v in pipe.scheduler.__dict__.items() if not k.startswith("_")}
    before_cfg = dict(pipe.scheduler.config)
    _run(pipe, SMALL, height=32, width=32)
    assert dict(pipe.scheduler.config) == before_cfg
    for k in ("num_inference_steps",):
        assert pipe.scheduler.__dict__.get(k) == before.get(k)


@pytest.mark.parametrize("kw, err, match", [
    (dict(height=40, width=64), ValueError, "divisible by 16|grid"),
    (dict(latents=torch.zeros(1, 16, 2, 3, 3)), ValueError, "latents"),
    (dict(num_videos_per_prompt=0), ValueError, "num_videos_per_prompt"),
    (dict(bogus=1), TypeError, "bogus"),
])
def test_bad_calls(pipe, kw, err, match):
    with pytest.raises(err, match=match):
        _run(pipe, SMALL, **{"height": 64, "width": 64, **kw})


def test_generator_list_length_checked(pipe):
    with surf_accel.patched(pipe, SMALL):
        with pytest.raises(ValueError, match="generators"):
            pipe(**{**T2V_KW, "height": 64, "width": 64}, generator=[gen(0), gen(1)])


def test_refine_guidance_needs_negatives(pipe):
    with pytest.raises(ValueError, match="negative"):
        _run(pipe, SMALL.replace(refine_guidance=3.0), height=32, width=32, guidance_scale=1.0)


@pytest.mark.parametrize("mode", ["consistent", "paper", "additive_low"])
def test_reshift_matches_float64_hand_computation(mode):
    """The runner's reshift against the formulas in float64: consistent (1 - s_low) x0 + s_low eps,
    paper x0 + s_k eps (s_k: the preview schedule's own level at step k), additive_low x0 + s_low eps."""
    from surf_accel.family import PreparedCall
    from surf_accel.planner import FamilySpec, Request, SchedulerSpec, plan_stages, shift_sigmas
    from surf_accel.runner import StageRunner

    fam = FamilySpec("wan2.1", 8, 4, (1, 2, 2), 32 * 32)
    spec = SchedulerSpec("euler", 3.0)
    plan = plan_stages(Request(64, 64, 5, 6), fam, spec, SMALL.replace(reshift=mode))
    pre, low = plan.stages[:2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 4, generator=g)
    v = torch.randn(2, 16, 2, 4, 4, generator=g)
    sigma = pre.sigmas[-2]
    call = PreparedCall(request=None, batch=2, guidance_scale=1, do_cfg=False, prompt_embeds=None,
                        negative_prompt_embeds=None, generator=gen(5), latents=None, output_type="latent",
                        return_dict=True, attention_kwargs=None, callback=None, callback_inputs=[],
                        device=torch.device("cpu"))
    out = StageRunner(None, None, plan, call)._reshift(x, v, sigma, low).double()
    eps = torch.randn(2, 16, 2, 2, 2, generator=gen(5)).double()
    x0 = x.double() - sigma * v.double()
    pooled = x0.reshape(2, 16, 2, 2, 2, 2, 2).mean(dim=(4, 6))
    s_low = low.sigmas[0]
    s_k = float(shift_sigmas(spec.time_grid(6)[2], pre.shift))  # switch_step 2 of 6
    assert s_k > s_low + 0.05
    want = {"consistent": (1 - s_low) * pooled + s_low * eps, "paper": pooled + s_k * eps,
            "additive_low": pooled + s_low * eps}[mode]
    torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("handoff", ["pixel", "latent"])
@pytest.mark.parametrize("at", [0, 3])  # in the optimal-size stage, in the low-resolution stage
def test_interrupt_returns_the_request_size(pipe, handoff, at):
    """diffusers returns what there is at the request's size: an interrupted SURF call brings its
    latents there through the handoff (without noise) and stops."""
    seen = []

    def stop(p, i, t, kwargs):
        seen.append(i)
        if i == at:
            p._interrupt = True
            stop.latents = kwargs["latents"]
        return {}

    cfg = SMALL.replace(handoff=handoff)
    out = _run(pipe, cfg, height=64, width=64, output_type="latent", callback_on_step_end=stop)
    assert seen == list(range(at + 1))  # no step after the interrupt
    assert out.shape == (1, 16, 2, 8, 8)  # 64 px: the request's latent size
    if handoff == "latent":
        from surf_accel.refiner import resize_latent

        torch.testing.assert_close(out, resize_latent(stop.latents.float(), (8, 8), "bilinear"))
    frames = _run(pipe, cfg, height=64, width=64, callback_on_step_end=stop)
    assert frames.shape == (1, 5, 64, 64, 3)
