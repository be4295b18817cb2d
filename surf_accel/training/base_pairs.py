"""Training pairs made by the base model itself (docs/design.md 1.3, optional pairs).

Clip pairs (``pairs.py``) encode real clips, so their ``z_lr`` is a VAE latent of a small clip. At
inference ``z_lr`` comes from the base model's own preview, whose latents are not distributed like
VAE encodings (the toy's 32 px previews decode to the right colour, yet a refiner trained only on clip
pairs maps their red to yellow: TRAINING.md). A base pair closes that gap: for a prompt and a seed,

- ``z_lr``: the SURF preview's last latents, brought to the target size by the handoff inference
  uses before a trained refiner (``pairs.z_lr_from_preview``);
- ``z_hr``: the output latents of the same call finished by the training-free refiner (the base
  model refining that preview at the target size with guidance).

So the trained refiner learns to do in one unguided pass per step what the base model does with
two guided passes: it distils the training-free refine, and cannot be more faithful than it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

import surf_accel
from surf_accel.training.pairs import target_stage, z_lr_from_preview


@torch.no_grad()
def make_base_pairs(pipe, adapter, surf_config, prompts: Sequence[str], seeds: Sequence[int], *, height: int,
                    width: int, num_frames: int, num_inference_steps: int, guidance_scale: float,
                    pairs_cfg, progress: bool = False) -> dict[str, torch.Tensor]:
    """``{"z_hr", "z_lr"}``, latents ``(N, C, T, h, w)`` float32, one pair per ``(prompt, seed)``.

    ``surf_config`` must refine without a trained refiner (its preview and its training-free refine
    make the pair); ``pairs_cfg`` gives the handoff of ``z_lr`` (as the trained refiner will see it).
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    preview_steps = surf_config.step_counts(num_inference_steps)[0]
    stage = target_stage(pipe, height, width, num_frames)
    caught: dict[str, torch.Tensor] = {}

    def keep_preview(_pipe, index, _t, kwargs):
        if index == preview_steps - 1:  # the preview's last step: its final latents, before the handoff
            caught["preview"] = kwargs["latents"].detach().to(torch.float32).cpu()
        return {}

    z_lr, z_hr = [], []
    it = list(zip(prompts, seeds))
    if progress:
        it = tqdm(it, desc="base pairs")
    with surf_accel.patched(pipe, surf_config):
        bar_cfg = dict(getattr(pipe, "_progress_bar_config", {}) or {})
        pipe.set_progress_bar_config(disable=True)
        try:
            for prompt, seed in it:
                caught.clear()
                out = pipe(prompt=prompt, height=height, width=width, num_frames=num_frames,
                           num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                           generator=torch.Generator().manual_seed(int(seed)), output_type="latent",
                           callback_on_step_end=keep_preview).frames
                if "preview" not in caught:
                    raise RuntimeError(f"the SURF call never reached its preview's last step ({preview_steps - 1})")
                z_lr.append(z_lr_from_preview(pipe, adapter, caught["preview"], stage, pairs_cfg).cpu())
                z_hr.append(out.to(torch.float32).cpu())
        finally:
            pipe.set_progress_bar_config(**bar_cfg)
    return {"z_hr": torch.cat(z_hr), "z_lr": torch.cat(z_lr)}


__all__ = ["make_base_pairs"]
