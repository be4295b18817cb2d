"""The patched HunyuanVideo-1.5 pipelines against the hand replay of SURF (``tests/surf_replay.py``:
diffusers' own scheduler and plain torch, no surf_accel runner, planner, refiner, op or adapter code).

HunyuanVideo-1.5 is written out here as the replay's ``Family``: the transformer called as
``HunyuanVideo15Pipeline`` calls it (``[latents, condition latents, mask]`` on channels, Qwen and ByT5
states with their masks, SigLIP states), its guider's combine by hand (``u + g (c - u)`` then the
guidance rescale of Lin et al. with the cond branch's std), and the I2V condition by hand at each stage's
size: the request-size image resized (Lanczos), scaled to [-1, 1], VAE-encoded (mode x scaling factor)
into frame 0 of the condition, a mask of ones at frame 0. A guider-combine slip (no rescale, the wrong
branch's std) or a stage-conditioning slip (the image at the request's size in every stage, a mask on
every frame) moves the output far beyond the tolerance.
"""

import numpy as np
import pytest
import torch
from PIL import Image

import surf_accel
from surf_accel import SurfConfig
from tests import surf_replay as sr
from tests.tiny_pipelines import gen, hv15_kwargs, tiny_hv15, tiny_image

ATOL = 2e-4  # as tests/test_surf_replay.py: float32 rounding; semantic faults move latents by > 1e-2
RESCALE = 0.7
SHIFTS = (5.0, 3.0, 6.0)
BASE = dict(optimal_size=(64, 64), preview_steps=6, switch_step=2, refine_steps=2, shifts=SHIFTS)
RECIPE = dict(optimal=(64, 64), shifts=SHIFTS, preview_steps=6, switch_step=2, refine_steps=2)


def _predict(pipe, model, x, t, cond, negative):
    p = "negative_" if negative else ""
    return model(hidden_states=x.to(model.dtype), timestep=t.expand(x.shape[0]).to(x.dtype),
                 encoder_hidden_states=cond[f"{p}prompt_embeds"],
                 encoder_attention_mask=cond[f"{p}prompt_embeds_mask"].float(),
                 encoder_hidden_states_2=cond[f"{p}prompt_embeds_2"],
                 encoder_attention_mask_2=cond[f"{p}prompt_embeds_mask_2"].float(),
                 image_embeds=cond["image_embeds"], return_dict=False)[0]


def _combine(c, u, g):
    v = u + g * (c - u)
    dims = list(range(1, c.ndim))
    return RESCALE * v * (c.std(dim=dims, keepdim=True) / v.std(dim=dims, keepdim=True)) + (1 - RESCALE) * v


def _condition(pipe, cond, height, width):
    """``[condition latents, mask]`` at ``height x width``: zeros for T2V; the image at frame 0 for I2V."""
    b, c = cond["prompt_embeds"].shape[0], pipe.vae.config.latent_channels
    lat = ((cond["num_frames"] - 1) // 4 + 1, height // 16, width // 16)
    z, mask = torch.zeros(b, c, *lat), torch.zeros(b, 1, *lat)
    if cond.get("image") is not None:
        img = cond["image"]
        if img.size != (width, height):
            img = img.resize((width, height), Image.LANCZOS)
        px = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None, :, None] * 2 - 1
        z[:, :, :1] = pipe.vae.encode(px).latent_dist.mode() * pipe.vae.config.scaling_factor
        mask[:, :, 0] = 1.0
    return torch.cat([z, mask], dim=1)


HV15 = sr.Family(_predict, sr._hy_decode, sr._hy_encode, lambda p: p.vae.config.latent_channels, _condition,
                 combine=_combine)


def _cond(kw, pipe, image=None):
    cond = {k: v for k, v in kw.items() if "embeds" in k}
    cond["num_frames"] = kw["num_frames"]
    if image is None:
        cond["image_embeds"] = torch.zeros(1, 729, pipe.transformer.config.image_embed_dim)
    else:
        cond["image"] = image
        pixels = pipe.feature_extractor.preprocess(images=image, do_resize=True, return_tensors="pt")
        cond["image_embeds"] = pipe.image_encoder(**pixels).last_hidden_state
    return cond


@pytest.fixture(scope="module")
def t2v():
    return tiny_hv15(guidance_scale=4.0, guidance_rescale=RESCALE)


@pytest.fixture(scope="module")
def i2v():
    p = tiny_hv15(i2v=True, guidance_scale=4.0, guidance_rescale=RESCALE)
    p.transformer.register_to_config(target_size=128)  # a square image's bucket: 128x128
    p.target_size = 128
    return p


def _patched(pipe, changes, kw):
    with surf_accel.patched(pipe, SurfConfig(**{**BASE, **changes})):
        return pipe(generator=gen(0), output_type="latent", **kw).frames


def _close(out, want):
    assert out.shape == want.shape
    err = (out.float() - want.float()).abs().max().item()
    assert err < ATOL, f"max |patched - replay| = {err:.3g}"


T2V_VARIANTS = [
    ("paper", dict(reshift="paper"), dict(reshift="paper")),
    ("consistent-latent-handoff", dict(reshift="consistent", handoff="latent"), dict(handoff="latent")),
    ("refine-no-cfg", dict(refine_guidance=1.0), dict(refine_guidance=1.0)),
    ("windows", dict(window=(1, 2, 2)), dict(window=(1, 2, 2))),
]


@pytest.mark.parametrize("changes, recipe", [v[1:] for v in T2V_VARIANTS], ids=[v[0] for v in T2V_VARIANTS])
def test_t2v_matches_the_replay(t2v, changes, recipe):
    kw = {k: v for k, v in hv15_kwargs(height=128, width=128, num_inference_steps=6).items() if k != "output_type"}
    out = _patched(t2v, changes, kw)
    want = sr.replay(t2v, HV15, sr.Recipe(**{**RECIPE, **recipe}), height=128, width=128, num_frames=5, num_steps=6,
                     guidance=4.0, cond=_cond(kw, t2v), generator=gen(0), uniform_grid=True)
    _close(out, want)


def test_i2v_matches_the_replay_with_the_image_rebuilt_per_stage(i2v):
    """64 px preview, 32 px low part, 128 px refine: three condition sizes."""
    kw = {k: v for k, v in hv15_kwargs(image=tiny_image(96, 96), num_inference_steps=6).items()
          if k not in ("output_type", "height", "width")}
    out = _patched(i2v, dict(reshift="paper"), kw)
    image = tiny_image(96, 96).resize((128, 128), Image.LANCZOS)  # the pipeline's crop to its 128-px bucket
    want = sr.replay(i2v, HV15, sr.Recipe(**{**RECIPE, "reshift": "paper"}), height=128, width=128, num_frames=5,
                     num_steps=6, guidance=4.0, cond=_cond(kw, i2v, image), generator=gen(0), uniform_grid=True)
    _close(out, want)
