"""Refiner training (docs/design.md 1.3): ``surf-accel train-refiner CONFIG``.

Modules, one concept each:

- ``config``: the run's YAML/JSON config (every knob, validated; the resume fingerprint);
- ``data``: HR clips (toy world or a folder of mp4 videos), captions, text embeddings;
- ``pairs``: ``z_hr`` / ``z_lr`` made as inference makes them (pixel degradations, the runner's
  handoff);
- ``base_pairs``: pairs made by the base model itself (its preview and its training-free refine);
- ``pair_store``: pairs on disk as shards, made by every process for its share, read lazily;
- ``objective``: flow matching on the straight path ``x_s = (1 - s) z_hr + s z_lr``;
- ``model``: the base pipeline, the refiner transformer (scratch / base copy / LoRA), pairing checks;
- ``ema``: the parameter average;
- ``loop``: the accelerate loop (DDP/FSDP, mixed precision, accumulation, checkpoints, resume);
- ``validate``: PSNR/SSIM to held-out HR clips and SURF-path signature metrics;
- ``export``: the ``surf_accel.Refiner`` folder.
- ``plan``: what a run needs before it runs (``--plan``: parameters, memory, FLOPs, time, disk).
"""

from surf_accel.training.config import (ConfigError, RefinerTrainingConfig, config_from_dict,  # noqa: F401
                                        load_config)


def train(config, **kwargs):
    """``surf_accel.training.loop.train`` for a config object, dict or file path."""
    from surf_accel.training.loop import train as _train  # heavy (accelerate, diffusers): configs load without it

    if isinstance(config, dict):
        config = config_from_dict(config)
    elif not isinstance(config, RefinerTrainingConfig):
        config = load_config(config)
    return _train(config, **kwargs)


__all__ = ["ConfigError", "RefinerTrainingConfig", "config_from_dict", "load_config", "train"]
