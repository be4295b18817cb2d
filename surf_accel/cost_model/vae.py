"""Per-pixel VAE FLOPs measured with ``torch.utils.flop_counter`` (docs/design.md 6), once per VAE
architecture."""

from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from surf_accel.cost_model.specs import VaeSpec

_MEASURED_VAES: dict[str, VaeSpec] = {}


def vae_spec(vae) -> VaeSpec:
    """``measure_vae`` of a meta-device copy of ``vae``'s architecture, once per VAE config (its
    weights and device are never touched)."""
    key = type(vae).__name__ + json.dumps(dict(vae.config), sort_keys=True, default=str)
    if key not in _MEASURED_VAES:
        with torch.device("meta"):
            meta = type(vae).from_config(vae.config)
        _MEASURED_VAES[key] = measure_vae(meta)
    return _MEASURED_VAES[key]


def measure_vae(vae, frames=(5, 9), size=(64, 64), device="meta") -> VaeSpec:
    """Per-pixel VAE FLOPs of ``vae`` (AutoencoderKLWan or AutoencoderKLHunyuanVideo) with
    ``torch.utils.flop_counter``, fitted as ``a + b * (frames - 1)`` through two frame counts."""
    h, w = size
    cfg = vae.config
    spatial = cfg.get("scale_factor_spatial") or cfg.get("spatial_compression_ratio")
    temporal = cfg.get("scale_factor_temporal") or cfg.get("temporal_compression_ratio")
    enc, dec = [], []
    # a Wan2.2 VAE patchifies RGB itself: its in_channels count the 2x2 patch's channels (12 = 3 x 4)
    rgb = cfg.in_channels // (cfg.get("patch_size") or 1) ** 2
    for f in frames:
        x = torch.zeros(1, rgb, f, h, w, device=device, dtype=vae.dtype)
        with FlopCounterMode(display=False) as fc:
            z = vae.encode(x).latent_dist.mode()
        enc.append(fc.get_total_flops() / (h * w))
        with FlopCounterMode(display=False) as fc:
            vae.decode(z)
        dec.append(fc.get_total_flops() / (h * w))
    (f0, f1) = frames
    eb, db = (enc[1] - enc[0]) / (f1 - f0), (dec[1] - dec[0]) / (f1 - f0)
    return VaeSpec(enc[0] - eb * (f0 - 1), eb, dec[0] - db * (f0 - 1), db, int(spatial), int(temporal))
