"""Export a trained transformer as a ``surf_accel.Refiner`` folder (safetensors + config.json).

The folder is what ``Refiner.from_pretrained`` loads and ``surf_accel.patch(pipe, config,
refiner=...)`` runs. LoRA adapters are merged into the base weights first, so the export is a plain
``WanTransformer3DModel``. Its metadata (inside config.json) holds the training config, the data
recipe (how the pairs were made), the inference settings the refiner was trained for (handoff
mode, preview size, windows) and the step count.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from surf_accel.refiner import Refiner
from surf_accel.training.config import RefinerTrainingConfig, refuse_package_path
from surf_accel.training.model import merged_copy

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def data_recipe(cfg: RefinerTrainingConfig) -> dict:
    """How the training pairs were made (a summary a user can reproduce the data from)."""
    d, p = cfg.data, cfg.pairs
    return {
        "source": d.source, "video_dir": d.video_dir, "num_clips": d.num_clips, "size": [d.height, d.width],
        "num_frames": d.num_frames, "seed": cfg.seed, "base": cfg.base,
        "z_hr": "VAE posterior mode of the HR clip, normalised with latents_mean/std",
        "z_lr": (f"HR clip area-downsampled to {p.preview_height}x{p.preview_width} px, degraded (p={p.degrade_prob}: "
                 f"blur sigma {list(p.blur_sigma)} px, pixel noise {list(p.pixel_noise)}, compression {p.compression}), "
                 f"VAE-encoded, surf_accel.refiner.handoff '{p.handoff}' ({p.latent_resize}) to the target, "
                 f"plus latent noise std {list(p.latent_noise)} per step"),
    }


def export_refiner(model, cfg: RefinerTrainingConfig, folder: Optional[str | os.PathLike] = None, *,
                   step: int, extra_metadata: Optional[dict] = None) -> Refiner:
    """Save ``model`` (weights as they are: the caller applies EMA first) as a Refiner folder in
    ``cfg.export.dtype``; returns the saved ``Refiner``."""
    folder = cfg.export_dir if folder is None else folder
    refuse_package_path("the export folder", folder)
    merged = merged_copy(model)
    with torch.no_grad():  # cast tensor by tensor: Module.to(fp16) makes diffusers warn about its fp32 modules
        for t in list(merged.parameters()) + list(merged.buffers()):
            t.data = t.data.to(DTYPES[cfg.export.dtype])
    meta = {
        "trained_steps": int(step),
        "training_config": cfg.to_dict(),
        "data_recipe": data_recipe(cfg),
        "inference": {"handoff": cfg.pairs.handoff, "latent_resize": cfg.pairs.latent_resize,
                      "preview_size": [cfg.pairs.preview_height, cfg.pairs.preview_width],
                      "target_size": [cfg.data.height, cfg.data.width], "window": cfg.model.window},
        "fingerprint": cfg.fingerprint(),
        **(extra_metadata or {}),
    }
    ref = Refiner(merged, num_steps=cfg.model.num_steps, metadata=meta)
    ref.save_pretrained(folder)
    return ref
