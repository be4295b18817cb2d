"""Pure-PyTorch references of the fused latent ops: the oracle for every backend and the fallback.

Latents are ``(B, C, T, H, W)``. Math runs in fp32; the result is cast back to the input dtype,
which is the contract every fast backend meets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reshift_downsample(
    latents: torch.Tensor,
    model_output: torch.Tensor,
    noise: torch.Tensor,
    sigma: float,
    sigma_new: float,
    factor: int,
    mode: str = "consistent",
) -> torch.Tensor:
    """Noise reshifting (docs/design.md 1.2): ``x0_hat = latents - sigma * model_output`` area-pooled by
    ``factor`` over H and W, then re-noised to ``sigma_new`` with ``noise`` of the pooled shape.

    ``mode="consistent"``: ``(1 - sigma_new) * pool(x0_hat) + sigma_new * noise``.
    ``mode="paper"``: ``pool(x0_hat) + sigma_new * noise`` (the paper's literal formula).
    """
    x0 = latents.float() - sigma * model_output.float()
    pooled = F.avg_pool3d(x0, kernel_size=(1, factor, factor))
    scale = 1.0 if mode == "paper" else 1.0 - sigma_new
    return (scale * pooled + sigma_new * noise.float()).to(latents.dtype).contiguous()


def upsample_mix(
    latents: torch.Tensor,
    noise: torch.Tensor,
    sigma: float,
    factor: int,
    mode: str = "nearest",
) -> torch.Tensor:
    """Refine start: ``(1 - sigma) * up(latents) + sigma * noise``, ``up`` being
    ``F.interpolate`` with scale ``(1, factor, factor)``, ``nearest`` or ``trilinear``
    (``align_corners=False``); ``noise`` has the upsampled shape."""
    if mode == "nearest":
        up = F.interpolate(latents.float(), scale_factor=(1, factor, factor), mode="nearest")
    else:
        up = F.interpolate(
            latents.float(), scale_factor=(1, factor, factor), mode="trilinear", align_corners=False
        )
    return ((1.0 - sigma) * up + sigma * noise.float()).to(latents.dtype).contiguous()


def guided_step(
    latents: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    guidance_scale: float,
    sigma: float,
    sigma_next: float,
) -> torch.Tensor:
    """Classifier-free guidance and the Euler step of a flow-matching sampler:
    ``latents + (sigma_next - sigma) * (v_uncond + g * (v_cond - v_uncond))``;
    with ``v_uncond=None``, ``latents + (sigma_next - sigma) * v_cond``."""
    v = v_cond.float()
    if v_uncond is not None:
        vu = v_uncond.float()
        v = vu + guidance_scale * (v - vu)
    return (latents.float() + (sigma_next - sigma) * v).to(latents.dtype).contiguous()
