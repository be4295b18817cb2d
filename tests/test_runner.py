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
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_unipc_identity_is_exact():
    p = tiny_wan_t2v("unipc")
    ref = p(generator=gen(3), **T2V_KW).frames
    out = _run(p, SurfConfig.identity(), seed=3)
    np.testing.assert_array_equal(out, ref)


def test_determinism_and_seed_dependence(pipe):
    a = _run(pipe, SMALL, seed=1, height=32, width=32)
    b = _run(pipe, SMALL, seed=1, height=32, width=32)
    c = _run(pipe, SMALL, seed=2, height=32, width=32)
    assert a.shape == (1, 5, 32, 32, 3)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-4


@pytest.mark.parametrize("changes", [
    dict(handoff="latent"),
    dict(handoff="latent", latent_resize="nearest"),
    dict(reshift="paper"),
    dict(renoise="predicted"),
    dict(handoff="latent", optimal_size=(32, 64)),  # non-integer latent factor 1.5 x 1 -> plain resize
    dict(refine_guidance=1.0),
])
def test_variants_run(pipe, changes):
    size = dict(height=48, width=64) if "optimal_size" in changes else dict(height=32, width=32)
    out = _run(pipe, SMALL.replace(**changes), **size)
    assert np.isfinite(out).all()


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


def test_reshift_matches_float64_hand_computation():
    """The runner's reshift against (1 - s_low) * avgpool(x - s v) + s_low * eps in float64."""
    from surf_accel.integrations.base import PreparedCall
    from surf_accel.planner import FamilySpec, Request, SchedulerSpec, plan_stages
    from surf_accel.runner import StageRunner

    fam = FamilySpec("wan2.1", 8, 4, (1, 2, 2), 32 * 32)
    plan = plan_stages(Request(64, 64, 5, 6), fam, SchedulerSpec("euler", 3.0), SMALL)
    low = plan.stages[1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 2, 4, 4, generator=g)
    v = torch.randn(2, 16, 2, 4, 4, generator=g)
    sigma = plan.stages[0].sigmas[-2]
    for mode in ("consistent", "paper"):
        call = PreparedCall(request=None, batch=2, guidance_scale=1, do_cfg=False, prompt_embeds=None,
                            negative_prompt_embeds=None, generator=gen(5), latents=None, output_type="latent",
                            return_dict=True, attention_kwargs=None, callback=None, callback_inputs=[],
                            device=torch.device("cpu"))
        r = StageRunner(None, None, plan if mode == "consistent" else
                        plan_stages(Request(64, 64, 5, 6), fam, SchedulerSpec("euler", 3.0),
                                    SMALL.replace(reshift="paper")), call)
        out = r._reshift(x, v, sigma, low).double()
        eps = torch.randn(2, 16, 2, 2, 2, generator=gen(5)).double()
        x0 = x.double() - sigma * v.double()
        pooled = x0.reshape(2, 16, 2, 2, 2, 2, 2).mean(dim=(4, 6))
        s = low.sigmas[0]
        want = ((1 - s) if mode == "consistent" else 1.0) * pooled + s * eps
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


def test_interrupt_stops_and_decodes(pipe):
    def stop(p, i, t, kwargs):
        if i == 0:
            p._interrupt = True
        return {}

    out = _run(pipe, SMALL, output_type="latent", callback_on_step_end=stop)
    assert out.shape == (1, 16, 2, 4, 4)  # still the first stage's latent
