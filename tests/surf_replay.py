"""A hand replay of SURF (docs/design.md 1.2, 1.3) from diffusers' own schedulers and plain torch: the oracle
the patched pipelines are compared with (tests/test_surf_replay.py).

Nothing here imports surf_accel's planner, runner, refiner or ops: step counts follow the documented
rules of ``SurfConfig`` (fractions of the call's steps), each stage's time grid is recovered from the
pipeline scheduler's own ``set_timesteps`` (unshifted, then shifted to the stage's shift), each stage
gets a fresh scheduler of the pipeline's class holding its sigmas, reshift and handoff are written out
from the formulas, and the transformer, VAE and I2V conditioning are called as the diffusers pipelines
call them. Shifted windows use ``surf_accel.integrations.window_processors`` (tested on its own
against the reference attention). Output: the final latents (``output_type="latent"``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.utils.torch_utils import randn_tensor


@dataclass
class Recipe:
    """What to replay: a SURF config written out by hand (no defaults borrowed from SurfConfig)."""

    optimal: tuple[int, int]
    shifts: tuple[float, float, float]  # preview, preview_low, refine
    preview_steps: int
    switch_step: int  # == preview_steps: no switch
    refine_steps: int
    factor: int = 2
    reshift: str = "consistent"  # "consistent" | "paper" | "additive_low"
    renoise: str = "fresh"
    handoff: str = "pixel"
    latent_resize: str = "bilinear"
    refine_start: float = 0.7
    refine_guidance: Optional[float] = None
    window: Optional[tuple[int, int, int]] = None
    trained_refiner: Any = None  # a WanTransformer3DModel on the straight z_lr -> z_hr path
    refine_model: Any = None  # a transformer for the training-free refine (default: the base)
    # two-expert pipelines (Wan2.2 A14B): the refine's expert, "low" | "high" | "route" (by timestep)
    refine_expert: str = "low"


@dataclass
class Family:
    """How one diffusers pipeline family calls its parts."""

    predict: Any  # (pipe, model, x, t, cond, negative) -> velocity
    decode: Any  # (pipe, latents) -> video in [-1, 1]
    encode: Any  # (pipe, video) -> latents
    channels: Any  # pipe -> latent channels
    condition: Any = None  # (pipe, cond, height, width) -> I2V channels to concatenate, or None
    extra: dict = field(default_factory=dict)
    # Wan2.2 expand_timesteps: (latents, condition, t) -> (model input, timestep); ``None``: the above
    inputs: Any = None
    finalize: Any = None  # (latents, condition) -> the latents the pipeline decodes; None: as they are
    combine: Any = None  # (v_cond, v_uncond, g) -> guided velocity; None: v_uncond + g (v_cond - v_uncond)


# ---------------------------------------------------------------------------- families
def _wan_stats(pipe, z):
    c = pipe.vae.config
    mean = torch.tensor(c.latents_mean).view(1, c.z_dim, 1, 1, 1).to(z.device, z.dtype)
    std = torch.tensor(c.latents_std).view(1, c.z_dim, 1, 1, 1).to(z.device, z.dtype)
    return mean, std


def _wan_predict(pipe, model, x, t, cond, negative):
    kw = dict(hidden_states=x.to(model.dtype), timestep=t.expand(x.shape[0]) if t.ndim == 0 else t,
              encoder_hidden_states=cond["negative_prompt_embeds" if negative else "prompt_embeds"],
              return_dict=False)
    if cond.get("image_embeds") is not None and model.config.image_dim is not None:
        kw["encoder_hidden_states_image"] = cond["image_embeds"]
    return model(**kw)[0]


def _wan_decode(pipe, z):
    z = z.to(pipe.vae.dtype)
    mean, std = _wan_stats(pipe, z)
    return pipe.vae.decode(z * std + mean, return_dict=False)[0]


def _wan_encode(pipe, video):
    z = pipe.vae.encode(video.to(pipe.vae.dtype)).latent_dist.mode().float()
    mean, std = _wan_stats(pipe, z)
    return (z - mean) / std


def _wan_i2v_condition(pipe, cond, height, width):
    image = pipe.video_processor.preprocess(cond["image"], height=height, width=width).to(torch.float32)
    b, c = cond["prompt_embeds"].shape[0], pipe.vae.config.z_dim
    lt = (cond["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    shape = (b, c, lt, height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
    _, condition = pipe.prepare_latents(image, b, c, height, width, cond["num_frames"], torch.float32,
                                        torch.device("cpu"), None, torch.zeros(shape), None)
    return condition


def _hy_predict(pipe, model, x, t, cond, negative):
    p = "negative_" if negative else ""
    return model(hidden_states=x.to(model.dtype), timestep=t.expand(x.shape[0]).to(x.dtype),
                 encoder_hidden_states=cond[f"{p}prompt_embeds"],
                 encoder_attention_mask=cond[f"{p}prompt_attention_mask"],
                 pooled_projections=cond[f"{p}pooled_prompt_embeds"], guidance=cond["guidance"],
                 return_dict=False)[0]


def _hy_decode(pipe, z):
    return pipe.vae.decode(z.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]


def _hy_encode(pipe, video):
    return pipe.vae.encode(video.to(pipe.vae.dtype)).latent_dist.mode().float() * pipe.vae.config.scaling_factor


def _ti2v_condition(pipe, cond, height, width):
    """(image latents (B, C, 1, h, w) or None for T2V, first-frame mask (1, 1, T, h, w))."""
    lt = (cond["num_frames"] - 1) // pipe.vae_scale_factor_temporal + 1
    hw = (height // pipe.vae_scale_factor_spatial, width // pipe.vae_scale_factor_spatial)
    if "image" not in cond:
        return None, torch.ones((1, 1, lt) + hw)
    image = pipe.video_processor.preprocess(cond["image"], height=height, width=width).to(torch.float32)
    b, c = cond["prompt_embeds"].shape[0], pipe.vae.config.z_dim
    _, condition, mask = pipe.prepare_latents(image, b, c, height, width, cond["num_frames"], torch.float32,
                                              torch.device("cpu"), None, torch.zeros((b, c, lt) + hw), None)
    return condition, mask


def _ti2v_inputs(latents, extra, t):
    """The TI2V-5B pipeline's model input and per-token timesteps (patch 2: every other row and column)."""
    condition, mask = extra
    x = latents if condition is None else (1 - mask) * condition + mask * latents
    ts = (mask[0, 0, :, ::2, ::2] * t).flatten()
    return x, ts[None].expand(latents.shape[0], -1)


def _ti2v_finalize(latents, extra):
    condition, mask = extra
    return latents if condition is None else (1 - mask) * condition + mask * latents


WAN = Family(_wan_predict, _wan_decode, _wan_encode, lambda p: p.vae.config.z_dim)
WAN_TI2V = Family(_wan_predict, _wan_decode, _wan_encode, lambda p: p.vae.config.z_dim, _ti2v_condition,
                  inputs=_ti2v_inputs, finalize=_ti2v_finalize)
WAN_I2V = Family(_wan_predict, _wan_decode, _wan_encode, lambda p: p.vae.config.z_dim, _wan_i2v_condition)
HUNYUAN = Family(_hy_predict, _hy_decode, _hy_encode, lambda p: p.transformer.config.in_channels)


# ---------------------------------------------------------------------------- schedules
def _shift(t, s):
    return s * t / (1 + (s - 1) * t)


def _pipeline_time_grid(pipe, n: int, uniform: bool) -> np.ndarray:
    """The unshifted times of the pipeline's ``n``-step schedule, recovered from its scheduler."""
    if uniform:  # HunyuanVideoPipeline hands its scheduler linspace(1, 0, n + 1)[:-1]
        return np.linspace(1.0, 0.0, n + 1)[:-1]
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(n)
    s = sched.sigmas[:-1].double().numpy()
    shift = pipe.scheduler.config.get("flow_shift") or pipe.scheduler.config.get("shift")
    return s / (shift - (shift - 1) * s)


def _fresh(pipe, sigmas):
    cls = type(pipe.scheduler)
    key = "flow_shift" if "flow_shift" in pipe.scheduler.config else "shift"
    sched = cls.from_config(pipe.scheduler.config, **{key: 1.0})
    sched.set_timesteps(sigmas=np.asarray(sigmas, dtype=np.float64))
    sched.set_begin_index(0)
    return sched


# ---------------------------------------------------------------------------- the replay
@torch.no_grad()
def replay(pipe, family: Family, r: Recipe, *, height: int, width: int, num_frames: int, num_steps: int,
           guidance: float, cond: dict, generator: torch.Generator, uniform_grid: bool = False,
           trace: Optional[list] = None) -> torch.Tensor:
    """SURF by hand: returns the output latents ``(B, C, T, H, W)``.

    Two-expert pipelines (``pipe.config.boundary_ratio``): a step at timestep ``t`` runs
    ``pipe.transformer`` with ``guidance`` where ``t >= boundary_ratio * 1000``, else
    ``pipe.transformer_2`` with ``cond["guidance_2"]``; the refine runs ``r.refine_expert``.
    ``trace`` collects ``(stage, "high" | "low" | "base", t)`` per step.
    """
    from surf_accel.integrations.window_processors import windowed_attention

    vs, vt = pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
    b, c = cond["prompt_embeds"].shape[0], family.channels(pipe)
    lt = (num_frames - 1) // vt + 1
    n, k, m = r.preview_steps, r.switch_step, r.refine_steps
    t_grid = _pipeline_time_grid(pipe, n, uniform_grid)
    (oh, ow), d = r.optimal, r.factor
    s_opt, s_low, s_ref = r.shifts

    boundary = pipe.config.get("boundary_ratio")

    def expert(stage, t, model, g, g_fixed):
        """The hand rule: Wan2.2's boundary at 1000 * boundary_ratio, the refine's chosen expert."""
        if boundary is None or model is not pipe.transformer:
            return "base", model, g
        which = r.refine_expert if stage == "refine" else "route"
        if which == "route":
            which = "high" if float(t) >= boundary * 1000.0 else "low"
        g_e = guidance if which == "high" else cond.get("guidance_2", guidance)
        return which, (pipe.transformer if which == "high" else pipe.transformer_2), (g if g_fixed else g_e)

    def run(latents, sigmas, h, w, model, g, last_to=None, window=None, stage="preview", g_fixed=False):
        """Steps on ``sigmas`` (evaluations) at pixel size h x w; with ``last_to`` the last evaluation
        is not stepped but handed to ``last_to(latents, v, sigma)``."""
        sched = _fresh(pipe, list(sigmas) + ([last_to[1]] if last_to else []))
        extra = family.condition(pipe, cond, h, w) if family.condition else None
        models = [pipe.transformer, pipe.transformer_2] if boundary is not None and model is pipe.transformer \
            else [model]
        with contextlib.ExitStack() as stack:
            for mm in models if window else ():
                stack.enter_context(windowed_attention(mm, window))
            for i, t in enumerate(sched.timesteps[:len(sigmas)]):
                name, mdl, g_t = expert(stage, t, model, g, g_fixed)
                if trace is not None:
                    trace.append((stage, name, float(t)))
                if family.inputs is not None:
                    x, t_in = family.inputs(latents, extra, t)
                else:
                    x = latents if extra is None or mdl.config.in_channels == latents.shape[1] \
                        else torch.cat([latents, extra], 1)
                    t_in = t
                v = family.predict(pipe, mdl, x, t_in, cond, False)
                if g > 1:  # CFG or not: the call's guidance_scale decides, as in the pipeline
                    vu = family.predict(pipe, mdl, x, t_in, cond, True)
                    v = vu + g_t * (v - vu) if family.combine is None else family.combine(v, vu, g_t)
                if last_to and i == len(sigmas) - 1:
                    return last_to[0](latents, v, float(sigmas[i]))
                latents = sched.step(v, t, latents, return_dict=False)[0]
        return latents

    latents = randn_tensor((b, c, lt, oh // vs, ow // vs), generator=generator, dtype=torch.float32)
    hi = _shift(t_grid[:k], s_opt)
    if k < n:
        low = _shift(t_grid[k:], s_low)
        s_k = float(_shift(t_grid[k], s_opt))

        def reshift(x, v, sigma):
            x, v = x.float(), v.float()
            x0 = F.avg_pool3d(x - sigma * v, (1, d, d))
            if r.renoise == "fresh":
                eps = randn_tensor(x0.shape, generator=generator, dtype=torch.float32)
            else:
                eps = F.avg_pool3d(x + (1 - sigma) * v, (1, d, d))
                eps = eps / eps.flatten(1).std(dim=1).view(-1, 1, 1, 1, 1)
            noise = s_k if r.reshift == "paper" else float(low[0])
            signal = 1 - noise if r.reshift == "consistent" else 1.0
            return signal * x0 + noise * eps

        latents = run(latents, hi, oh, ow, pipe.transformer, guidance, last_to=(reshift, float(low[0])))
        latents = run(latents, low, oh // d, ow // d, pipe.transformer, guidance, stage="preview_low")
        ph, pw = oh // d, ow // d
    else:
        latents = run(latents, hi, oh, ow, pipe.transformer, guidance)
        ph, pw = oh, ow
    if family.finalize is not None:  # the preview as the pipeline would end it (TI2V: the image's first frame)
        latents = family.finalize(latents, family.condition(pipe, cond, ph, pw))
    if m == 0:
        return latents

    # handoff: z_lr at the request's size
    dst = (lt, height // vs, width // vs)
    if r.handoff == "pixel":
        video = family.decode(pipe, latents).float()
        if video.shape[-2:] != (height, width):
            video = F.interpolate(video, size=(video.shape[2], height, width), mode="trilinear",
                                  align_corners=False).clamp(-1, 1)
        z_lr = family.encode(pipe, video)
    elif r.latent_resize == "nearest":
        z_lr = F.interpolate(latents.float(), size=dst, mode="nearest")
    else:
        z_lr = F.interpolate(latents.float(), size=dst, mode="trilinear", align_corners=False)

    if r.trained_refiner is not None:  # Euler on x_s = (1 - s) z_hr + s z_lr from s = 1, no noise, no CFG
        model, x = r.trained_refiner, z_lr
        sig = np.linspace(1.0, 0.0, m + 1)
        ctx = windowed_attention(model, r.window) if r.window else contextlib.nullcontext()
        with ctx:
            for i in range(m):
                t = torch.tensor([sig[i] * 1000.0], dtype=torch.float32)
                v = family.predict(pipe, model, x, t, cond, False).float()
                x = x + float(sig[i + 1] - sig[i]) * v
        return x
    t_star = r.refine_start / (s_ref - (s_ref - 1) * r.refine_start)
    ref = _shift(np.linspace(t_star, 0.0, m + 1)[:-1], s_ref)
    eps = randn_tensor(z_lr.shape, generator=generator, dtype=torch.float32)
    x = (1 - float(ref[0])) * z_lr + float(ref[0]) * eps
    g = guidance if r.refine_guidance is None else r.refine_guidance
    out = run(x, ref, height, width, r.refine_model or pipe.transformer, g, window=r.window, stage="refine",
              g_fixed=r.refine_guidance is not None)
    if family.finalize is not None:
        out = family.finalize(out, family.condition(pipe, cond, height, width))
    return out
