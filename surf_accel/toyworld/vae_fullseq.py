"""Whole-clip forward passes of `AutoencoderKLWan`, equal to its chunked encode/decode.

diffusers encodes a video in chunks (frame 0 alone, then 4 frames at a time) and decodes it one latent
frame at a time, carrying causal-convolution caches between calls. That is memory-friendly, but on
a CPU with small tensors the per-chunk Python overhead dominates a training step. Every causal
convolution with carried caches equals one zero-padded causal convolution over the whole clip; the
only chunk-aware parts are the temporal resamplers:

- ``downsample3d``: frame 0 passes through, the rest is the stride-2 time convolution over the
  whole clip (windows start at frame 0, exactly as the chunks' one-frame overlap makes them);
- ``upsample3d``: frame 0 passes through, frames 1.. go through the causal time convolution that
  doubles them (frame 0 never enters it).

:func:`encode_full` and :func:`decode_full` run the encoder and decoder once over the whole clip
with those two behaviours, so training sees exactly the function that the pipeline runs
(checked against ``vae.encode`` / ``vae.decode`` in tests/toyworld/test_train_smoke.py).
"""

from __future__ import annotations

import contextlib
import types

import torch


def _resample_full(self, x, feat_cache=None, feat_idx=[0]):  # noqa: B006 - mirrors diffusers' signature
    b, c, t, h, w = x.shape
    if self.mode == "upsample3d" and t > 1:
        rest = self.time_conv(x[:, :, 1:])
        rest = rest.reshape(b, 2, c, t - 1, h, w)
        rest = torch.stack((rest[:, 0], rest[:, 1]), 3).reshape(b, c, (t - 1) * 2, h, w)
        x = torch.cat([x[:, :, :1], rest], 2)
    t = x.shape[2]
    x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
    x = self.resample(x)
    x = x.view(b, t, x.size(1), x.size(2), x.size(3)).permute(0, 2, 1, 3, 4)
    if self.mode == "downsample3d" and t > 1:
        x = torch.cat([x[:, :, :1], self.time_conv(x)], 2)
    return x


@contextlib.contextmanager
def whole_clip(vae):
    """Within the context, the VAE's temporal resamplers process whole clips (instance-level)."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResample

    patched = [m for m in vae.modules() if isinstance(m, WanResample)]
    for m in patched:
        m.forward = types.MethodType(_resample_full, m)
    try:
        yield vae
    finally:
        for m in patched:
            del m.forward


def _check_frames(t: int):
    if (t - 1) % 4:
        raise ValueError(f"clip length must be 1 + 4k frames, got {t}")


def encode_full(vae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, T, H, W) in [-1, 1] -> posterior (mean, logvar), each (B, z, 1 + (T-1)/4, H/s, W/s)."""
    _check_frames(x.shape[2])
    with whole_clip(vae):
        h = vae.quant_conv(vae.encoder(x))
    mean, logvar = torch.chunk(h, 2, dim=1)
    return mean, torch.clamp(logvar, -30.0, 20.0)


def decode_full(vae, z: torch.Tensor, clamp: bool = False) -> torch.Tensor:
    """(B, z, t, h, w) latents -> (B, 3, 1 + 4(t-1), h*s, w*s) frames (unclamped unless asked)."""
    with whole_clip(vae):
        out = vae.decoder(vae.post_quant_conv(z), first_chunk=True)
    return out.clamp(-1.0, 1.0) if clamp else out
