"""A tiny refiner training config on the shipped toy pipeline (64 px target, 32 px preview, 5 frames)."""

from __future__ import annotations

import copy

TINY_MODEL = {"num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64}


def tiny_config(output_dir, **sections) -> dict:
    d = {
        "output_dir": str(output_dir),
        "base": "toy",
        "seed": 0,
        "data": {"source": "toy", "num_clips": 16, "val_clips": 2, "height": 64, "width": 64, "num_frames": 5,
                 "max_sequence_length": 16},
        "pairs": {"preview_height": 32, "preview_width": 32, "handoff": "latent", "compression": "jpeg"},
        "model": {"init": "scratch", "config": dict(TINY_MODEL), "num_steps": 4, "window": [1, 4, 4]},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 1e-3, "ema_decay": 0.9, "loader_workers": 0},
        "checkpoint": {"every": 2, "keep": 5},
        "validation": {"every": 0},
        "log_every": 1,
    }
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            d[k] = {**d[k], **v}
        else:
            d[k] = v
    return copy.deepcopy(d)
