"""Wan2.2 SURF against the hand replay (``tests/surf_replay.py``): two-expert routing (A14B T2V and
I2V) and expand_timesteps (TI2V-5B T2V and I2V, 48-channel 16x VAE).

Besides the latents, the routing itself is checked: forward hooks record which expert saw which
timestep in the patched call, and that trace must equal the replay's and obey the rule written out
here (``t >= boundary_ratio * 1000``: the high-noise ``transformer``). The tiny pipelines use
``boundary_ratio=0.7`` so that the high-noise expert runs in the optimal-size preview and in the
low-resolution stage, and the low-noise one in both as well (the routes differ per stage resolution).
"""

import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from tests import surf_replay as sr
from tests.test_surf_replay import BASE, HW, RECIPE, _close, _wan_cond
from tests.tiny_pipelines import gen, tiny_image, tiny_wan22_a14b, tiny_wan22_ti2v

BOUNDARY = 0.7
G, G2 = 4.0, 2.0  # guidance_scale (high-noise expert), guidance_scale_2 (low-noise expert)


@pytest.fixture(scope="module", params=["euler", "unipc"])
def a14b(request):
    return tiny_wan22_a14b(kind=request.param, boundary_ratio=BOUNDARY)


def _record(pipe):
    """Hooks on both experts: ``[(expert, timestep)]`` per transformer call."""
    seen, handles = [], []
    for name, m in (("high", pipe.transformer), ("low", pipe.transformer_2)):
        if m is None:
            continue
        handles.append(m.register_forward_pre_hook(
            lambda mod, a, kw, name=name: seen.append((name, float(kw["timestep"].flatten()[0]))), with_kwargs=True))
    return seen, handles


def _run_both(pipe, changes, recipe, cond, call_extra=None, family=sr.WAN, hw=HW, base=BASE, rec=RECIPE, frames=5):
    call = dict(**cond, num_frames=frames, num_inference_steps=6, guidance_scale=G, **hw, **(call_extra or {}))
    seen, handles = _record(pipe)
    try:
        with surf_accel.patched(pipe, SurfConfig(**{**base, **changes})):
            out = pipe(generator=gen(0), output_type="latent", **call).frames
    finally:
        for h in handles:
            h.remove()
    trace = []
    rcond = {**cond, "guidance_2": G2, "num_frames": frames, **({"image": call["image"]} if "image" in call else {})}
    want = sr.replay(pipe, family, sr.Recipe(**{**rec, **recipe}), num_frames=frames, num_steps=6, guidance=G,
                     cond=rcond, generator=gen(0), trace=trace, **hw)
    return out, want, seen, trace


def _check_routing(seen, trace, refine_expert, boundary=BOUNDARY):
    # CFG: two calls per step, both on the step's expert
    assert seen[::2] == seen[1::2]
    steps = seen[::2]
    assert len(trace) == len(steps)
    assert [t for _, _, t in trace] == pytest.approx([t for _, t in steps], abs=1e-3)
    for (stage, name, t), (got, _) in zip(trace, steps):
        assert got == name
        if stage == "refine" and refine_expert != "route":
            assert got == refine_expert
        else:  # the published rule, by hand
            assert got == ("high" if t >= boundary * 1000 else "low"), (stage, t)
    preview = [(s, n) for s, n, _ in trace if s != "refine"]
    # not vacuous: both experts in the preview, and the low-resolution stage starts above the boundary
    assert {n for _, n in preview} == {"high", "low"}
    assert {n for s, n in preview if s == "preview_low"} == {"high", "low"}


@pytest.mark.parametrize("changes, recipe", [
    ({}, {}),  # refine_expert "low" (the default)
    (dict(refine_expert="high"), dict(refine_expert="high")),
    (dict(refine_expert="route", refine_start=0.8), dict(refine_expert="route", refine_start=0.8)),
    (dict(refine_guidance=3.0, handoff="latent"), dict(refine_guidance=3.0, handoff="latent")),
], ids=["refine-low", "refine-high", "refine-route", "refine-guidance-latent"])
def test_a14b_t2v_matches_replay_and_routes_by_timestep(a14b, changes, recipe):
    cond = _wan_cond(a14b)
    out, want, seen, trace = _run_both(a14b, changes, recipe, cond, dict(guidance_scale_2=G2))
    _close(out, want)
    expert = changes.get("refine_expert", "low")
    _check_routing(seen, trace, expert)
    refine = [n for s, n, _ in trace if s == "refine"]
    assert refine == {"low": ["low", "low"], "high": ["high", "high"], "route": ["high", "low"]}[expert]


def test_a14b_step_at_the_boundary_goes_to_the_high_noise_expert():
    """``t >= boundary`` as the pipeline compares: UniPC's integer timesteps put the low-resolution
    stage's first step at exactly t = 800, so boundary_ratio 0.8 sends it to ``transformer``."""
    pipe = tiny_wan22_a14b(kind="unipc", boundary_ratio=0.8)
    out, want, seen, trace = _run_both(pipe, {}, {}, _wan_cond(pipe), dict(guidance_scale_2=G2))
    _close(out, want)
    assert ("preview_low", "high", 800.0) in trace
    _check_routing(seen, trace, "low", boundary=0.8)


def test_a14b_guidance_2_matters():
    """guidance_scale_2 reaches the low-noise steps: another value gives another result (a runner
    using guidance_scale everywhere would pass the replay only if the replay made the same slip)."""
    pipe = tiny_wan22_a14b(boundary_ratio=BOUNDARY)
    cond = _wan_cond(pipe)
    call = dict(**cond, num_frames=5, num_inference_steps=6, guidance_scale=G, output_type="latent", **HW)
    with surf_accel.patched(pipe, SurfConfig(**BASE)):
        a = pipe(generator=gen(0), guidance_scale_2=G2, **call).frames
        b = pipe(generator=gen(0), guidance_scale_2=G, **call).frames
    assert (a - b).abs().max() > 1e-3


def test_a14b_i2v_matches_replay():
    pipe = tiny_wan22_a14b(i2v=True, boundary_ratio=BOUNDARY)
    cond = _wan_cond(pipe)
    out, want, seen, trace = _run_both(pipe, {}, {}, cond, dict(image=tiny_image(), guidance_scale_2=G2),
                                       family=sr.WAN_I2V)
    _close(out, want)
    _check_routing(seen, trace, "low")


TI2V_HW = dict(height=128, width=128)
TI2V_BASE = {**BASE, "optimal_size": (64, 64)}
TI2V_RECIPE = {**RECIPE, "optimal": (64, 64)}


@pytest.mark.parametrize("i2v, kind, changes", [
    (False, "euler", {}), (True, "euler", {}), (True, "unipc", dict(handoff="latent")),
], ids=["t2v-euler-pixel", "i2v-euler-pixel", "i2v-unipc-latent"])
def test_ti2v_matches_replay(i2v, kind, changes):
    """Per-token timesteps at every stage's token grid; I2V: the image's latents in the first frame
    at every stage's resolution, put back before the pixel handoff and at the end."""
    pipe = tiny_wan22_ti2v(i2v=i2v, kind=kind)
    cond = _wan_cond(pipe)
    seen = []
    h = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["timestep"].clone()),
                                                   with_kwargs=True)
    try:
        out, want, _, _ = _run_both(pipe, changes, changes, cond, dict(image=tiny_image()) if i2v else None,
                                    family=sr.WAN_TI2V, hw=TI2V_HW, base=TI2V_BASE, rec=TI2V_RECIPE)
    finally:
        h.remove()
    _close(out, want)
    assert len(seen) == 2 * 16  # the patched call's 8 steps x 2 CFG branches, then the replay's
    seen = seen[:16]
    # one timestep per token at each stage: 2 latent frames x (4/2, 2/2, 8/2) squared token grids
    assert [t.shape[1] for t in seen[::2]] == [2 * 4] * 2 + [2 * 1] * 4 + [2 * 16] * 2
    if i2v:  # the first frame's tokens at timestep 0, the others at the step's
        for t in seen:
            per_frame = t[0].view(2, -1)
            assert (per_frame[0] == 0).all() and (per_frame[1] > 0).all()
        # the output's first latent frame is the image's latents at the request's size
        cond_lat, _ = sr._ti2v_condition(pipe, {**cond, "image": tiny_image(), "num_frames": 5}, 128, 128)
        torch.testing.assert_close(out[:, :, :1], cond_lat)
