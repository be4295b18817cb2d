import math

import numpy as np
import pytest

from surf_accel.config import SurfConfig
from surf_accel.planner import FamilySpec, Request, SchedulerSpec, plan_stages, shift_sigmas, unshift_sigma

WAN = FamilySpec("wan2.1", 8, 4, (1, 2, 2), 480 * 832, rope_max_seq_len=1024)
EULER = SchedulerSpec("euler", 5.0, sigma_max=1.0, sigma_min=5.0 * 1e-3 / (1 + 4.0 * 1e-3))
UNIPC = SchedulerSpec("unipc", 5.0)
REQ = Request(720, 1280, 81, 50)


def test_paper_plan_shapes():
    plan = plan_stages(REQ, WAN, UNIPC, SurfConfig())
    names = [s.name for s in plan.stages]
    assert names == ["preview", "preview_low", "refine"]
    pre, low, ref = plan.stages
    assert pre.steps == 10 and low.steps == 30 and ref.steps == 10
    assert pre.latent_size == (21, pre.height // 8, pre.width // 8)
    assert low.latent_size == (21, pre.latent_size[1] // 2, pre.latent_size[2] // 2)
    assert ref.latent_size == (21, 90, 160)
    # optimal size: 480p area with the request's 16:9 aspect, on the 32 px grid
    assert pre.height % 32 == 0 and pre.width % 32 == 0
    assert abs(pre.height * pre.width - 480 * 832) / (480 * 832) < 0.1
    assert abs(pre.width / pre.height - 16 / 9) < 0.1
    assert any("optimal size" in m for m in plan.messages)
    assert low.step_offset == 10 and ref.step_offset == 40 and plan.total_steps == 50


@pytest.mark.parametrize("sched", [EULER, UNIPC])
@pytest.mark.parametrize("cfg", [SurfConfig(), SurfConfig.preset("fast"), SurfConfig.preset("quality")])
def test_sigmas_monotone_and_in_range(sched, cfg):
    plan = plan_stages(REQ, WAN, sched, cfg)
    for s in plan.stages:
        sig = np.array(s.sigmas)
        assert np.all(np.diff(sig) < 0), s.name
        assert sig[0] <= 1.0 and sig[-1] >= 0.0
    assert plan.stages[-1].sigmas[-1] == 0.0


def test_switch_keeps_time_and_changes_shift():
    plan = plan_stages(REQ, WAN, UNIPC, SurfConfig())
    pre, low, _ = plan.stages
    t = UNIPC.time_grid(40)
    assert low.shift < pre.shift
    # float32 values, as the pipeline's scheduler stores them
    assert math.isclose(low.sigmas[0], float(shift_sigmas(t[10], low.shift)), rel_tol=1e-6)
    assert pre.sigmas[-1] == low.sigmas[0]  # the reshift target
    assert math.isclose(pre.sigmas[0], float(shift_sigmas(t[0], pre.shift)), rel_tol=1e-6)


def test_sqrt_token_shift_rule():
    plan = plan_stages(REQ, WAN, UNIPC, SurfConfig())
    pre, low, ref = plan.stages
    assert ref.shift == pytest.approx(5.0)
    ratio = pre.latent_size[1] * pre.latent_size[2] / (90 * 160)
    assert pre.shift == pytest.approx(5.0 * math.sqrt(ratio))
    const = plan_stages(REQ, WAN, UNIPC, SurfConfig(shift_rule="constant"))
    assert all(s.shift == 5.0 for s in const.stages)


def test_refine_starts_at_refine_start():
    plan = plan_stages(REQ, WAN, UNIPC, SurfConfig(refine_start=0.3, refine_steps=4))
    ref = plan.stages[-1]
    assert ref.sigmas[0] == pytest.approx(0.3) and ref.steps == 4 and ref.start == "handoff"
    assert unshift_sigma(float(shift_sigmas(0.4, 3.0)), 3.0) == pytest.approx(0.4)


def test_trained_refiner_path():
    plan = plan_stages(REQ, WAN, UNIPC, SurfConfig(), trained_refiner=True, trained_refiner_steps=7)
    ref = plan.stages[-1]
    assert ref.model == "trained_refiner" and not ref.use_scheduler
    assert ref.sigmas == pytest.approx(tuple(np.linspace(1, 0, 8)))  # the refiner's own 7 steps from s = 1
    explicit = plan_stages(REQ, WAN, UNIPC, SurfConfig(refine_steps=3), trained_refiner=True, trained_refiner_steps=7)
    assert explicit.stages[-1].steps == 3


@pytest.mark.parametrize("sched", [EULER, UNIPC])
def test_identity_matches_scheduler(sched):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if sched.kind == "euler":
        ref = FlowMatchEulerDiscreteScheduler(shift=5.0)
        spec = SchedulerSpec("euler", 5.0, sigma_max=ref.sigma_max, sigma_min=ref.sigma_min)
    else:
        ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
        spec = sched
    ref.set_timesteps(7)
    plan = plan_stages(Request(64, 64, 5, 7), WAN, spec, SurfConfig.identity())
    assert len(plan.stages) == 1
    s = plan.stages[0]
    assert (s.height, s.width, s.latent_size) == (64, 64, (2, 8, 8))
    ours = np.array(s.sigmas, dtype=np.float32)
    theirs = ref.sigmas.numpy()
    if sched.kind == "unipc":
        ours[0] -= 1e-6
    np.testing.assert_array_equal(ours, theirs)


def test_no_switch_when_switch_equals_steps_or_downsample_1():
    p = plan_stages(REQ, WAN, UNIPC, SurfConfig(switch_step=40))
    assert [s.name for s in p.stages] == ["preview", "refine"]
    p = plan_stages(REQ, WAN, UNIPC, SurfConfig(switch_fraction=1.0))
    assert [s.name for s in p.stages] == ["preview", "refine"]
    p = plan_stages(REQ, WAN, UNIPC, SurfConfig(downsample=1))
    assert [s.name for s in p.stages] == ["preview", "refine"]
    assert any("downsample=1" in m for m in p.messages)


def test_preview_steps_none_uses_call_steps():
    p = plan_stages(Request(720, 1280, 81, 20), WAN, UNIPC, SurfConfig(preview_fraction=1.0, switch_step=5))
    assert p.stages[0].steps == 5 and p.stages[1].steps == 15
    with pytest.raises(ValueError, match="switch_step"):
        plan_stages(Request(720, 1280, 81, 4), WAN, UNIPC, SurfConfig(preview_fraction=1.0, switch_step=5))


def test_refine_zero_outputs_preview_size():
    p = plan_stages(REQ, WAN, UNIPC, SurfConfig(refine_steps=0))
    assert p.stages[-1].name == "preview_low"
    assert any("refine_steps=0" in m for m in p.warnings)


def test_snapping_and_refusals():
    with pytest.raises(ValueError, match="16-pixel grid"):
        plan_stages(Request(721, 1280, 81, 50), WAN, UNIPC, SurfConfig())
    with pytest.raises(ValueError, match="optimal_size"):
        plan_stages(REQ, WAN, UNIPC, SurfConfig(optimal_size=(480, 840)))  # 840 not a multiple of 32
    # with no switch, the 16 px grid suffices
    plan_stages(REQ, WAN, UNIPC, SurfConfig(optimal_size=(480, 848), switch_fraction=1.0))
    with pytest.raises(ValueError, match="num_frames"):
        plan_stages(Request(720, 1280, 0, 50), WAN, UNIPC, SurfConfig())
    with pytest.raises(ValueError, match="num_inference_steps"):
        plan_stages(Request(720, 1280, 81, 0), WAN, UNIPC, SurfConfig())


def test_rope_limit():
    fam = FamilySpec("tiny", 8, 4, (1, 2, 2), 64 * 64, rope_max_seq_len=32)
    with pytest.raises(ValueError, match="rope_max_seq_len"):
        plan_stages(Request(1024, 1024, 9, 4), fam, UNIPC, SurfConfig(refine_steps=2))


def test_bad_scheduler_spec():
    with pytest.raises(ValueError, match="kind"):
        SchedulerSpec("ddim", 3.0)
    with pytest.raises(ValueError, match="shift"):
        SchedulerSpec("euler", 0.0)


def test_explicit_shifts_override_rule():
    p = plan_stages(REQ, WAN, UNIPC, SurfConfig(shifts=(3.0, None, 5.0)))
    pre, low, ref = p.stages
    assert pre.shift == 3.0 and ref.shift == 5.0
    assert low.shift == pytest.approx(5.0 * math.sqrt(low.latent_size[1] * low.latent_size[2] / (90 * 160)))
    with pytest.raises(ValueError, match="shifts"):
        SurfConfig(shifts=(3.0, 0.0, None))
    with pytest.raises(ValueError, match="shifts"):
        SurfConfig(shifts=(3.0,))


def test_uniform_time_grid():
    """The grid HunyuanVideoPipeline hands its scheduler: linspace(1, 0, n + 1)[:-1], then shifted."""
    spec = SchedulerSpec("euler", 7.0, grid="uniform")
    np.testing.assert_allclose(spec.time_grid(4), [1.0, 0.75, 0.5, 0.25])
    plan = plan_stages(Request(64, 64, 5, 4), FamilySpec("hy", 8, 4, (1, 2, 2), 64 * 64), spec,
                       SurfConfig.identity())
    np.testing.assert_allclose(plan.stages[0].sigmas, list(shift_sigmas([1.0, 0.75, 0.5, 0.25], 7.0)) + [0.0])
    with pytest.raises(ValueError, match="time grid"):
        SchedulerSpec("euler", 7.0, grid="karras")


def test_reshift_noise_per_mode():
    """consistent and additive_low re-noise at the low schedule's s_low(t_k); paper at the preview
    schedule's own s_k (docs/design.md 1.2), here taken from a diffusers scheduler at the preview's shift."""
    from diffusers import UniPCMultistepScheduler

    plans = {m: plan_stages(REQ, WAN, UNIPC, SurfConfig(reshift=m)) for m in ("consistent", "paper", "additive_low")}
    pre, low = plans["paper"].stages[:2]
    ref = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=pre.shift)
    ref.set_timesteps(40)
    assert plans["paper"].stages[1].reshift_noise == pytest.approx(float(ref.sigmas[10]), abs=1e-6)
    assert plans["paper"].stages[1].reshift_noise > low.sigmas[0] + 0.05  # the preview's shift is the larger
    for m in ("consistent", "additive_low"):
        assert plans[m].stages[1].reshift_noise == plans[m].stages[1].sigmas[0]
    assert all(p.stages[1].sigmas == low.sigmas for p in plans.values())


def test_optimal_size_never_above_the_request():
    """Wan's 480p optimal size for a 128x128 request was planned as a 640x640 preview."""
    p = plan_stages(Request(128, 128, 17, 40), WAN, UNIPC, SurfConfig())
    assert (p.stages[0].height, p.stages[0].width) == (128, 128)
    assert any("640x640" in w and "not below the request" in w for w in p.warnings)
    p = plan_stages(Request(720, 720, 17, 40), WAN, UNIPC, SurfConfig())  # 640 < 720: the family's size
    assert (p.stages[0].height, p.stages[0].width) == (640, 640) and not p.warnings
    p = plan_stages(Request(400, 1200, 17, 40), WAN, UNIPC, SurfConfig())  # wide: 352x1056 fits
    assert p.stages[0].height <= 400 and p.stages[0].width <= 1200
    p = plan_stages(Request(144, 144, 17, 40), WAN, UNIPC, SurfConfig())  # snapped down to the 32 px grid
    assert (p.stages[0].height, p.stages[0].width) == (128, 128)
    asked = plan_stages(Request(128, 128, 17, 40), WAN, UNIPC, SurfConfig(optimal_size=(256, 256)))
    assert asked.stages[0].height == 256 and any("larger than the request" in w for w in asked.warnings)


def test_shift_below_one_is_floored_with_a_warning():
    """Hub-default flow_shift 3.0 at 720p: the sqrt rule gives ~0.99 at 240p."""
    p = plan_stages(REQ, WAN, SchedulerSpec("unipc", 3.0), SurfConfig())
    low = p.stages[1]
    assert low.shift == 1.0 and any("floored at 1" in w for w in p.warnings)
    assert all(s.shift >= 1.0 for s in p.stages)
    np.testing.assert_allclose(low.sigmas[:-1], UNIPC.time_grid(40)[10:], rtol=0, atol=1e-7)  # shift 1 = the grid
    assert not plan_stages(REQ, WAN, UNIPC, SurfConfig()).warnings  # shift 5 stays above 1


def test_uniform_grid_sigmas_are_the_pipelines_float32_ones():
    """HunyuanVideoPipeline hands float64 linspace sigmas to its scheduler, which casts them to float32
    before shifting: the plan holds exactly those values."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    ref = FlowMatchEulerDiscreteScheduler(shift=7.0)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.0, 31)[:-1])
    plan = plan_stages(Request(64, 64, 5, 30), FamilySpec("hy", 8, 4, (1, 2, 2), 64 * 64),
                       SchedulerSpec("euler", 7.0, grid="uniform"), SurfConfig.identity())
    np.testing.assert_array_equal(np.array(plan.stages[0].sigmas, dtype=np.float32), ref.sigmas.numpy())


@pytest.mark.parametrize("preset", ["paper", "fast", "quality"])
@pytest.mark.parametrize("steps", range(1, 9))
def test_step_distilled_step_counts_plan_no_empty_stage_and_say_when_surf_costs_more(preset, steps):
    """A step-distilled Wan (4-8 steps, guidance 1): every stage takes at least one step; from 4 steps SURF
    is predicted cheaper than the call; where it is not (1 step), the estimate says so."""
    from surf_accel.catalogue import estimate

    est = estimate("wan2.1-14b", 720, 1280, 81, SurfConfig.preset(preset), steps=steps, guidance=False)
    assert all(s.steps >= 1 for s in est.plan.stages)
    assert est.plan.stages[-1].latent_size == (21, 90, 160)
    if steps >= 4:
        assert est.speedup > 1.5
    if est.speedup < 1:
        assert est.cost_warning
