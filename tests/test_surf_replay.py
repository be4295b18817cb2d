"""The patched pipelines against a hand replay of SURF (``tests/surf_replay.py``: diffusers' own
schedulers and plain torch, no surf_accel runner, planner, refiner or op code).

Every row is one SurfConfig with the replay's hand-written recipe for it; the patched call's latents
must match the replay's to float32 rounding (the replay recovers each stage's time grid from the
scheduler's float32 sigmas, so the two differ by a few ulps in the sigmas and ~1e-6 in the output).
Any semantic slip (a discarded preview, a wrong reshift coefficient, a missing branch, noise where
there should be none) moves the output by orders of magnitude more.
"""

import math

import pytest
import torch

import surf_accel
from surf_accel import Refiner, SurfConfig
from tests import surf_replay as sr
from tests.tiny_pipelines import (gen, hunyuan_embeds, tiny_hunyuan_t2v, tiny_image, tiny_transformer, tiny_wan_i2v,
                                  tiny_wan_t2v)

ATOL = 2e-4  # float32 latents of unit scale after ~10 steps; semantic faults move them by > 1e-2
SHIFTS = (3.0, 2.0, 4.0)
BASE = dict(optimal_size=(32, 32), preview_steps=6, switch_step=2, refine_steps=2, shifts=SHIFTS)
RECIPE = dict(optimal=(32, 32), shifts=SHIFTS, preview_steps=6, switch_step=2, refine_steps=2)
HW = dict(height=64, width=64)

# (id, SurfConfig changes, Recipe changes)
VARIANTS = [
    ("paper-defaults", {}, {}),
    ("reshift-consistent", dict(reshift="consistent"), dict(reshift="consistent")),
    ("reshift-paper", dict(reshift="paper"), dict(reshift="paper")),
    ("reshift-additive_low", dict(reshift="additive_low"), dict(reshift="additive_low")),
    ("renoise-predicted", dict(renoise="predicted"), dict(renoise="predicted")),
    ("latent-bilinear", dict(handoff="latent"), dict(handoff="latent")),
    ("latent-nearest", dict(handoff="latent", latent_resize="nearest"), dict(handoff="latent", latent_resize="nearest")),
    ("refine-no-cfg", dict(refine_guidance=1.0), dict(refine_guidance=1.0)),
    ("refine-start-0.4", dict(refine_start=0.4), dict(refine_start=0.4)),
    ("no-switch", dict(switch_step=6), dict(switch_step=6)),
    ("no-refine", dict(refine_steps=0), dict(refine_steps=0)),
    ("windows", dict(window=(1, 2, 2)), dict(window=(1, 2, 2))),
]


def _config(changes):
    return SurfConfig(**{**BASE, **changes})


def _wan_cond(pipe, batch=1, seed=7, guidance=4.0):
    g = torch.Generator().manual_seed(seed)
    d = pipe.transformer.config.text_dim
    return dict(prompt_embeds=torch.randn(batch, 16, d, generator=g),
                negative_prompt_embeds=torch.randn(batch, 16, d, generator=g))


def _patched_latents(pipe, config, refiner=None, **call):
    with surf_accel.patched(pipe, config, refiner=refiner):
        return pipe(generator=gen(0), output_type="latent", **call).frames


def _close(out, want):
    assert out.shape == want.shape
    err = (out.float() - want.float()).abs().max().item()
    assert err < ATOL, f"max |patched - replay| = {err:.3g}"


def _check_wan_variant(pipe, changes, recipe, num_frames):
    """The patched T2V call with ``BASE`` + ``changes`` against the replay of ``RECIPE`` + ``recipe``."""
    cond = _wan_cond(pipe)
    call = dict(**cond, num_frames=num_frames, num_inference_steps=6, guidance_scale=4.0, **HW)
    out = _patched_latents(pipe, _config(changes), **call)
    want = sr.replay(pipe, sr.WAN, sr.Recipe(**{**RECIPE, **recipe}), num_frames=num_frames, num_steps=6,
                     guidance=4.0, cond=cond, generator=gen(0), **HW)
    _close(out, want)


@pytest.fixture(scope="module", params=["euler", "unipc"])
def wan(request):
    return tiny_wan_t2v(request.param)


@pytest.mark.parametrize("name, changes, recipe", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_wan_t2v_matches_the_replay(wan, name, changes, recipe):
    _check_wan_variant(wan, changes, recipe, num_frames=5)


def test_wan_t2v_batch_and_no_cfg(wan):
    cond = _wan_cond(wan, batch=2)
    call = dict(**cond, num_frames=5, num_inference_steps=6, guidance_scale=1.0, **HW)
    out = _patched_latents(wan, _config({}), **call)
    want = sr.replay(wan, sr.WAN, sr.Recipe(**RECIPE), num_frames=5, num_steps=6, guidance=1.0, cond=cond,
                     generator=gen(0), **HW)
    _close(out, want)


def test_wan_t2v_steps_and_shifts_follow_the_call(wan):
    """No explicit counts or shifts: a preview of 80% of the 8 steps (6), 25% of them (2) at 32 px, the
    rest at 16 px, 20% of 8 (2) refine steps, each stage's shift = the scheduler's x sqrt(tokens /
    request tokens), floored at 1 (SurfConfig docs)."""
    cfg = SurfConfig(optimal_size=(32, 32), reshift="paper")
    shift = wan.scheduler.config.get("flow_shift") or wan.scheduler.config.get("shift")
    shifts = (shift * math.sqrt(1 / 4), max(1.0, shift * math.sqrt(1 / 16)), shift)
    cond = _wan_cond(wan)
    out = _patched_latents(wan, cfg, **cond, num_frames=5, num_inference_steps=8, guidance_scale=4.0, **HW)
    want = sr.replay(wan, sr.WAN, sr.Recipe(optimal=(32, 32), shifts=shifts, preview_steps=6, switch_step=2,
                                            refine_steps=2, reshift="paper"),
                     num_frames=5, num_steps=8, guidance=4.0, cond=cond, generator=gen(0), **HW)
    _close(out, want)


@pytest.mark.parametrize("handoff", ["pixel", "latent"])
def test_wan_trained_refiner_matches_the_replay(wan, handoff):
    """The trained refiner starts from z_lr itself (s = 1, no noise), takes its own num_steps (3: the
    config leaves refine_steps unset) plain Euler steps without guidance."""
    torch.manual_seed(3)
    refiner = Refiner(tiny_transformer(seed=3), num_steps=3)
    cfg = _config(dict(handoff=handoff)).replace(refine_steps=None)
    cond = _wan_cond(wan)
    out = _patched_latents(wan, cfg, refiner=refiner, **cond, num_frames=5, num_inference_steps=6, guidance_scale=4.0,
                           **HW)
    want = sr.replay(wan, sr.WAN, sr.Recipe(**{**RECIPE, "refine_steps": 3}, handoff=handoff,
                                            trained_refiner=refiner.transformer),
                     num_frames=5, num_steps=6, guidance=4.0, cond=cond, generator=gen(0), **HW)
    _close(out, want)


@pytest.mark.parametrize("changes, start", [({}, 0.3), (dict(transformer_refine_start=None), 0.7),
                                            (dict(transformer_refine_start=0.5, refine_start=0.9), 0.5)])
def test_wan_refiner_transformer_matches_the_replay(wan, changes, start):
    """Another transformer refines from transformer_refine_start (0.3 by default; None: refine_start, 0.7)."""
    other = tiny_transformer(seed=5)
    cond = _wan_cond(wan)
    out = _patched_latents(wan, _config(changes), refiner=other, **cond, num_frames=5, num_inference_steps=6,
                           guidance_scale=4.0, **HW)
    want = sr.replay(wan, sr.WAN, sr.Recipe(**RECIPE, refine_model=other, refine_start=start), num_frames=5,
                     num_steps=6, guidance=4.0, cond=cond, generator=gen(0), **HW)
    _close(out, want)


def test_wan_bf16_matches_the_replay():
    """The same arithmetic in the pipeline's own dtype (CFG and scheduler steps in bf16, as diffusers)."""
    p = tiny_wan_t2v("euler").to(torch.bfloat16)
    cond = {k: v.to(torch.bfloat16) for k, v in _wan_cond(p).items()}
    out = _patched_latents(p, _config(dict(handoff="latent")), **cond, num_frames=5, num_inference_steps=6,
                           guidance_scale=4.0, **HW)
    want = sr.replay(p, sr.WAN, sr.Recipe(**RECIPE, handoff="latent"), num_frames=5, num_steps=6, guidance=4.0,
                     cond=cond, generator=gen(0), **HW)
    assert out.dtype == torch.bfloat16
    assert (out.float() - want.float()).abs().max().item() < 0.05  # bf16: 3 significant digits per step


I2V_VARIANTS = [("pixel", {}, {}), ("latent", dict(handoff="latent"), dict(handoff="latent")),
                ("reshift-paper", dict(reshift="paper"), dict(reshift="paper"))]


@pytest.mark.parametrize("name, changes, recipe", I2V_VARIANTS, ids=[v[0] for v in I2V_VARIANTS])
@pytest.mark.parametrize("kind", ["euler", "unipc"])
def test_wan_i2v_matches_the_replay(kind, name, changes, recipe):
    """I2V: the first-frame mask and image latents are rebuilt at every stage's size."""
    p = tiny_wan_i2v(kind)
    image = tiny_image(64, 64)
    cond = _wan_cond(p)
    out = _patched_latents(p, _config(changes), image=image, **cond, num_frames=5, num_inference_steps=6,
                           guidance_scale=4.0, **HW)
    with torch.no_grad():
        image_embeds = p.encode_image(image, torch.device("cpu"))
    want = sr.replay(p, sr.WAN_I2V, sr.Recipe(**{**RECIPE, **recipe}), num_frames=5, num_steps=6, guidance=4.0,
                     cond={**cond, "image": image, "image_embeds": image_embeds, "num_frames": 5}, generator=gen(0),
                     **HW)
    _close(out, want)


HY_VARIANTS = [("pixel", {}, {}), ("paper", dict(reshift="paper"), dict(reshift="paper")),
               ("latent", dict(handoff="latent"), dict(handoff="latent")),
               ("windows", dict(window=(1, 2, 2)), dict(window=(1, 2, 2)))]


@pytest.mark.parametrize("name, changes, recipe", HY_VARIANTS, ids=[v[0] for v in HY_VARIANTS])
@pytest.mark.parametrize("true_cfg", [False, True])
def test_hunyuan_matches_the_replay(name, changes, recipe, true_cfg):
    p = tiny_hunyuan_t2v()
    cond = hunyuan_embeds(1, seed=1, valid=5)
    call = dict(cond, num_frames=5, num_inference_steps=6, guidance_scale=6.0, **HW)
    g = 1.0
    if true_cfg:
        neg = hunyuan_embeds(1, seed=2, valid=3, negative=True)
        call.update(neg, true_cfg_scale=3.0)
        cond = {**cond, **neg}
        g = 3.0
    out = _patched_latents(p, _config(changes), **call)
    guidance = torch.tensor([6.0]) * 1000.0
    want = sr.replay(p, sr.HUNYUAN, sr.Recipe(**{**RECIPE, **recipe}), num_frames=5, num_steps=6, guidance=g,
                     cond={**cond, "guidance": guidance}, generator=gen(0), uniform_grid=True, **HW)
    _close(out, want)


TOY_VARIANTS = [("pixel", {}, {}), ("paper", dict(reshift="paper"), dict(reshift="paper")),
                ("predicted", dict(renoise="predicted"), dict(renoise="predicted"))]


@pytest.fixture(scope="module", params=["unipc", "euler"])
def toy(request):
    """The shipped toy WanPipeline: its trained VAE round-trips frames (the tiny random VAE above maps
    every preview to nearly the same latents, so only this pipeline shows the pixel handoff keeps the
    preview)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from surf_accel.toyworld import load_pipeline, pipeline_available

    if not pipeline_available():
        pytest.skip("toy pipeline not shipped")
    p = load_pipeline(torch.float32)
    p.set_progress_bar_config(disable=True)
    if request.param == "euler":
        p.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return p


@pytest.mark.parametrize("name, changes, recipe", TOY_VARIANTS, ids=[v[0] for v in TOY_VARIANTS])
def test_toy_pixel_handoff_matches_the_replay(toy, name, changes, recipe):
    _check_wan_variant(toy, changes, recipe, num_frames=9)


def test_toy_trained_refiner_pixel_handoff_matches_the_replay(toy):
    cfg = dict(toy.transformer.config)
    torch.manual_seed(4)
    refiner = Refiner(type(toy.transformer).from_config({**cfg, "num_layers": 1}).eval(), num_steps=3)
    cond = _wan_cond(toy)
    out = _patched_latents(toy, _config({}).replace(refine_steps=None), refiner=refiner, **cond, num_frames=9,
                           num_inference_steps=6, guidance_scale=4.0, **HW)
    want = sr.replay(toy, sr.WAN, sr.Recipe(**{**RECIPE, "refine_steps": 3}, trained_refiner=refiner.transformer),
                     num_frames=9, num_steps=6, guidance=4.0, cond=cond, generator=gen(0), **HW)
    _close(out, want)
