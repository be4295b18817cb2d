"""LR/HR training pairs made the way inference makes ``z_lr`` (docs/design.md 1.3).

For an HR clip ``x`` ``(B, 3, F, H, W)`` in [-1, 1]:

- ``z_hr`` = the base VAE's latent of ``x`` (the distribution's mode, normalised by the adapter,
  i.e. what the pipeline's transformer sees), ``(B, C, T, H/s, W/s)``;
- a *preview latent*: ``x`` area-downsampled to the preview size, degraded in pixels (blur, noise,
  JPEG frames or an H.264 round trip), VAE-encoded: the stand-in for the base model's low-resolution
  preview;
- ``z_lr`` = ``surf_accel.refiner.handoff`` of that preview latent to the target stage, the very
  function the runner calls before a trained refiner (``pixel``: decode, resize, encode;
  ``latent``: resize the latent), with no noise (a trained refiner starts at ``s = 1`` from
  ``z_lr``). Latent-level noise is added per training step (``objective.degrade_latent``), so each
  pass over the data sees fresh noise.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from surf_accel.config import SurfConfig
from surf_accel.planner import Stage
from surf_accel.refiner import handoff
from surf_accel.training.config import PairsConfig


# ---------------------------------------------------------------------------- pixel degradations
def gaussian_blur(video: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per frame of ``(B, 3, F, H, W)``; ``sigma`` in pixels (0: identity)."""
    if sigma <= 0:
        return video
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    k = (k / k.sum()).to(video.dtype)
    b, c, f, h, w = video.shape
    fr = video.permute(0, 2, 1, 3, 4).reshape(b * f * c, 1, h, w)
    fr = F.conv2d(F.pad(fr, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    fr = F.conv2d(F.pad(fr, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return fr.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).contiguous()


def _to_uint8(frames: torch.Tensor):
    """(3, F, H, W) in [-1, 1] -> numpy (F, H, W, 3) uint8."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


def _from_uint8(arr) -> torch.Tensor:
    return torch.from_numpy(arr).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def jpeg_roundtrip(clip: torch.Tensor, quality: int) -> torch.Tensor:
    """Every frame of ``(3, F, H, W)`` through JPEG at ``quality`` (PIL)."""
    out = []
    for fr in _to_uint8(clip):
        buf = io.BytesIO()
        Image.fromarray(fr).save(buf, format="JPEG", quality=int(quality))
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return _from_uint8(np.stack(out))


def h264_roundtrip(clip: torch.Tensor, crf: int) -> torch.Tensor:
    """``(3, F, H, W)`` through an H.264 encode (libx264, yuv420p, constant rate factor ``crf``) and
    decode, in memory with PyAV. Frame size must be even (yuv420p)."""
    import av  # optional (the train extra): only H.264 degradations need it

    frames = _to_uint8(clip)
    n, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H.264 (yuv420p) needs even frame sizes, got {h}x{w}")
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"crf": str(int(crf)), "preset": "veryfast"}
        for fr in frames:  # to yuv420p with a bicubic filter, as the ffmpeg command line converts
            yuv = av.VideoFrame.from_ndarray(fr, format="rgb24").reformat(format="yuv420p", interpolation="BICUBIC")
            out.mux(s.encode(yuv))
        out.mux(s.encode())  # flush the encoder
    buf.seek(0)
    with av.open(buf) as inp:
        dec = [f.to_ndarray(format="rgb24") for f in inp.decode(video=0)]
    if len(dec) != n:
        raise RuntimeError(f"H.264 round trip returned {len(dec)} of {n} frames")
    return _from_uint8(np.stack(dec))


@dataclass(frozen=True)
class Degradation:
    """One clip's sampled pixel degradation (recorded per pair in the cache)."""

    blur_sigma: float = 0.0
    pixel_noise: float = 0.0
    compression: str = "none"
    level: float = 0.0  # JPEG quality or H.264 CRF

    def as_list(self) -> list[float]:
        return [self.blur_sigma, self.pixel_noise, {"none": 0.0, "jpeg": 1.0, "h264": 2.0}[self.compression], self.level]


def sample_degradation(cfg: PairsConfig, rng: random.Random) -> Degradation:
    if rng.random() >= cfg.degrade_prob:
        return Degradation()
    level = 0.0
    if cfg.compression == "jpeg":
        level = round(rng.uniform(*cfg.jpeg_quality))
    elif cfg.compression == "h264":
        level = round(rng.uniform(*cfg.h264_crf))
    return Degradation(rng.uniform(*cfg.blur_sigma), rng.uniform(*cfg.pixel_noise), cfg.compression, float(level))


def degrade(clip: torch.Tensor, d: Degradation, gen: torch.Generator) -> torch.Tensor:
    """Apply ``d`` to one ``(3, F, H, W)`` clip in [-1, 1]: blur, then noise, then compression."""
    x = gaussian_blur(clip[None], d.blur_sigma)[0]
    if d.pixel_noise > 0:
        x = x + d.pixel_noise * 2.0 * torch.randn(x.shape, generator=gen)  # std as a fraction of [0, 1]
    x = x.clamp(-1.0, 1.0)
    if d.compression == "jpeg":
        x = jpeg_roundtrip(x, int(d.level))
    elif d.compression == "h264":
        x = h264_roundtrip(x, int(d.level))
    return x


def downsample(video: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 3, F, H, W)`` area-resized per frame to ``height x width`` (the preview's pixel size)."""
    if tuple(video.shape[-2:]) == (height, width):
        return video
    b, c, f = video.shape[:3]
    fr = video.permute(0, 2, 1, 3, 4).reshape(b * f, c, *video.shape[-2:])
    mode = "area" if height <= video.shape[-2] else "bilinear"
    fr = F.interpolate(fr, size=(height, width), mode=mode)
    return fr.reshape(b, f, c, height, width).permute(0, 2, 1, 3, 4).contiguous()


# ---------------------------------------------------------------------------- VAE and handoff
def target_stage(pipe, height: int, width: int, num_frames: int) -> Stage:
    """The refine stage a trained refiner runs at ``height x width``: its latent size is the
    planner's formula, which is all the handoff reads of it."""
    vs, vt = int(pipe.vae_scale_factor_spatial), int(pipe.vae_scale_factor_temporal)
    lt = (num_frames - 1) // vt + 1
    return Stage("refine", height, width, (lt, height // vs, width // vs), (1.0, 0.0), 1.0, "trained_refiner",
                 "handoff", 0)


def handoff_config(cfg: PairsConfig):
    """The ``SurfConfig`` fields the handoff reads (mode and latent interpolation)."""
    return SurfConfig(handoff=cfg.handoff, latent_resize=cfg.latent_resize)


def encode(pipe, adapter, video: torch.Tensor) -> torch.Tensor:
    """``(B, 3, F, H, W)`` in [-1, 1] -> normalised latents ``(B, C, T, h, w)`` float32 (the adapter's
    encode, as the handoff encodes: the posterior mode, normalised as the transformer sees latents)."""
    return adapter.encode(pipe, video)


def z_lr_from_preview(pipe, adapter, preview: torch.Tensor, stage: Stage, cfg: PairsConfig) -> torch.Tensor:
    """Inference's ``z_lr`` for a preview latent ``(B, C, T, h, w)``: ``refiner.handoff`` with no
    noise, the call the runner makes before a trained refiner."""
    return handoff(pipe, adapter, preview, stage, handoff_config(cfg), None, 1.0)


@torch.no_grad()
def make_pairs(pipe, adapter, clips, cfg: PairsConfig, seed: int, *, start: int = 0, stop: Optional[int] = None,
               progress: bool = False) -> dict[str, torch.Tensor]:
    """Pairs for clips ``start:stop`` of ``clips`` (a ``(N, 3, F, H, W)`` tensor in [-1, 1] or a
    ``data.ClipSource``): ``{"z_hr", "z_lr", "degradation"}`` with latents ``(n, C, T, h, w)`` float32 and
    ``degradation`` ``(n, 4)`` (blur sigma, pixel noise, compression code 0/1/2 = none/jpeg/h264, quality
    or CRF). Each clip is encoded alone (as inference encodes one video; batching changes the VAE's
    rounding) and degraded by generators seeded by ``(seed, its index)``, so a pair is the same
    whichever range it is made in."""
    stop = len(clips) if stop is None else min(stop, len(clips))
    take = (lambda a, b: clips[a:b]) if isinstance(clips, torch.Tensor) else clips.batch
    z_hr, z_lr, rec = [], [], []
    stage = None
    for i in tqdm(range(start, stop), desc="pairs", disable=not progress):
        x = take(i, i + 1).float()
        if stage is None:
            stage = target_stage(pipe, x.shape[-2], x.shape[-1], x.shape[2])
        z_hr.append(encode(pipe, adapter, x).cpu())
        d = sample_degradation(cfg, random.Random(seed * 1_000_003 + i))
        low = degrade(downsample(x, cfg.preview_height, cfg.preview_width)[0], d,
                      torch.Generator().manual_seed(seed * 7919 + i))
        rec.append(d.as_list())
        z_lr.append(z_lr_from_preview(pipe, adapter, encode(pipe, adapter, low[None]), stage, cfg).cpu())
    return {"z_hr": torch.cat(z_hr), "z_lr": torch.cat(z_lr), "degradation": torch.tensor(rec, dtype=torch.float32)}


def module_id(module) -> str:
    """Identifies a diffusers or transformers model (its config and a sample of its weights): pairs
    and embeddings made with it are only valid for it."""
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    h = hashlib.sha256(json.dumps({k: v for k, v in config.items() if not k.startswith("_")},
                                  sort_keys=True, default=list).encode())
    for k, v in sorted(module.state_dict().items())[:8]:
        h.update(k.encode())
        h.update(v.detach().float().cpu().flatten()[:256].numpy().tobytes())
    return h.hexdigest()[:16]


def vae_id(pipe) -> str:
    return module_id(pipe.vae)


def check_sizes(pipe, height: int, width: int, num_frames: int, cfg: PairsConfig, patch_size) -> None:
    """Sizes the VAE and the refiner's patching can take; ``ValueError`` naming the fix."""
    vs, vt = int(pipe.vae_scale_factor_spatial), int(pipe.vae_scale_factor_temporal)
    g = vs * max(int(patch_size[1]), int(patch_size[2]))
    for what, hh, ww in (("data", height, width), ("pairs.preview", cfg.preview_height, cfg.preview_width)):
        if hh % g or ww % g:
            raise ValueError(f"{what} size {hh}x{ww} is not on the {g}-pixel grid (VAE {vs}x x patch "
                             f"{tuple(patch_size)[1:]})")
    if (num_frames - 1) % vt:
        raise ValueError(f"data.num_frames must be 1 + {vt}k for this VAE, got {num_frames}")
    if cfg.preview_height > height or cfg.preview_width > width:
        raise ValueError(f"the preview ({cfg.preview_height}x{cfg.preview_width}) must not be larger than the "
                         f"target ({height}x{width})")


__all__ = ["Degradation", "degrade", "downsample", "encode", "gaussian_blur", "h264_roundtrip", "jpeg_roundtrip",
           "make_pairs", "sample_degradation", "target_stage", "z_lr_from_preview"]

