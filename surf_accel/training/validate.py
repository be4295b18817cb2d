"""Validation of a refiner under training.

- Held-out pairs: the refiner's Euler steps from each pair's ``z_lr`` (no latent noise), decoded by
  the base VAE, against the HR clip: PSNR and SSIM (``surf_accel.metrics``); the same for ``z_lr``
  decoded as it is (what the refiner must beat).
- Prompts (optional): the base pipeline patched with SURF and this refiner generates each prompt at
  the target size (the full preview + handoff + refine path); for toy-world prompts the signature
  metrics (colour, shape, direction) of the videos.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

import surf_accel
from surf_accel import toyworld
from surf_accel.config import SurfConfig
from surf_accel.metrics import aggregate
from surf_accel.metrics.similarity import psnr, ssim
from surf_accel.refiner import Refiner
from surf_accel.runner import window_context
from surf_accel.toyworld.world import parse_prompt
from surf_accel.training.model import merged_copy
from surf_accel.training.objective import euler_refine


def _frames(video: torch.Tensor):
    """(B, 3, F, H, W) in [-1, 1] -> numpy (B, F, H, W, 3) in [0, 1]."""
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).cpu().numpy()


@torch.no_grad()
def pair_metrics(pipe, adapter, model, z_lr: torch.Tensor, text: torch.Tensor, hr: torch.Tensor, num_steps: int,
                 num_train_timesteps: int) -> dict:
    """PSNR/SSIM to the HR clips ``hr`` (B, 3, F, H, W) of the refined and of the unrefined ``z_lr``."""
    refined = euler_refine(model, z_lr, text, num_steps, num_train_timesteps)
    out = {}
    target = _frames(hr)
    for name, z in (("refined", refined), ("z_lr", z_lr)):
        got = _frames(adapter.decode(pipe, z))
        out[f"psnr_{name}"] = round(psnr(target, got), 3)
        out[f"ssim_{name}"] = round(ssim(target, got), 4)
    return out


def surf_config_for(cfg, surf) -> "object":
    """The SurfConfig of the prompt validation: ``"toy"`` = the toy world's setting with this run's
    handoff, a dict = SurfConfig fields, or a preset name."""
    if surf == "toy":
        return toyworld.surf_config(handoff=cfg.pairs.handoff, latent_resize=cfg.pairs.latent_resize, window=cfg.model.window)
    if isinstance(surf, dict):
        d = dict(surf)
        for k in ("optimal_size", "window", "shifts"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        return SurfConfig(**d)
    return SurfConfig.preset(str(surf))


@torch.no_grad()
def prompt_metrics(pipe, refiner, surf_config, prompts: Sequence[str], *, height: int, width: int, num_frames: int,
                   num_inference_steps: int, guidance_scale: float, seed: int) -> dict:
    """Generate ``prompts`` through SURF with ``refiner``; the toy signature metrics when every
    prompt is a toy-world prompt (else only that the videos are finite)."""
    videos = []
    with surf_accel.patched(pipe, surf_config, refiner=refiner):
        for i, p in enumerate(prompts):
            g = torch.Generator().manual_seed(seed + i)
            videos.append(pipe(prompt=p, height=height, width=width, num_frames=num_frames,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               generator=g, output_type="np").frames[0])
    out: dict = {"finite": bool(all(np.isfinite(v).all() for v in videos))}
    if all(len(parse_prompt(p)) == 3 for p in prompts):
        ev = aggregate.evaluate(videos, list(prompts))["summary"]
        out.update({k: ev[k] for k in ("colour_acc", "shape_acc", "direction_acc", "all_acc")})
    return out


def run_validation(pipe, adapter, model, cfg, val: Optional[dict], *, num_train_timesteps: int) -> dict:
    """Both validations for the (EMA-applied, eval-mode) ``model``; ``val``: held-out tensors
    ``{"z_lr", "text", "hr"}`` or ``None``."""
    res: dict = {}
    plain = merged_copy(model)
    if val is not None and val["z_lr"].shape[0]:
        # the refiner attends as at inference: the inference processors (SurfConfig.window)
        with window_context(plain, cfg.model.window):
            res.update(pair_metrics(pipe, adapter, plain, val["z_lr"], val["text"], val["hr"], cfg.model.num_steps,
                                    num_train_timesteps))
    v = cfg.validation
    if v.prompts:
        res.update(prompt_metrics(pipe, Refiner(plain, num_steps=cfg.model.num_steps), surf_config_for(cfg, v.surf),
                                  v.prompts, height=cfg.data.height, width=cfg.data.width,
                                  num_frames=cfg.data.num_frames, num_inference_steps=v.num_inference_steps,
                                  guidance_scale=v.guidance_scale, seed=v.seed))
    return res
