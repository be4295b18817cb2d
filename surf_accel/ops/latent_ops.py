"""The fused latent ops of docs/design.md 3.1: public entry points, validation and one implementation per
backend. Latents are ``(B, C, T, H, W)``; math is fp32, outputs keep the input dtype, and noise
is always passed in (drawn from the caller's generator) so every backend agrees for a seed.
"""

from __future__ import annotations

from typing import Optional

import torch

from surf_accel import _extension
from surf_accel.ops import backends as _backends  # noqa: F401  (registers the backends)
from surf_accel.ops import checks, reference
from surf_accel.ops.dispatch import Op

RESHIFT_MODES = ("consistent", "paper")
UPSAMPLE_MODES = ("nearest", "bilinear")


# Output shapes, shared by the fake (meta) kernels of the compiled and Triton ops.
def _fake_reshift(latents, model_output, noise, sigma, sigma_new, factor, paper):
    b, c, t, h, w = latents.shape
    return latents.new_empty((b, c, t, h // factor, w // factor))


def _fake_upsample(latents, noise, sigma, factor, bilinear):
    b, c, t, h, w = latents.shape
    return latents.new_empty((b, c, t, h * factor, w * factor))


def _fake_guided(latents, v_cond, v_uncond, guidance_scale, sigma, sigma_next):
    return torch.empty_like(latents, memory_format=torch.contiguous_format)


_FAKES = {"reshift_downsample": _fake_reshift, "upsample_mix": _fake_upsample, "guided_step": _fake_guided}

if _extension.load():
    for _name, _fake in _FAKES.items():
        torch.library.register_fake(f"surf_accel::{_name}")(_fake)


# Triton launchers wrapped as custom ops so torch.compile treats them as opaque nodes.
@torch.library.custom_op("surf_accel_triton::reshift_downsample", mutates_args=())
def _triton_reshift(latents: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor,
                    sigma: float, sigma_new: float, factor: int, paper: bool) -> torch.Tensor:
    from surf_accel.triton_kernels import latent_ops
    return latent_ops.reshift_downsample(latents, model_output, noise, sigma, sigma_new, factor, paper)


@torch.library.custom_op("surf_accel_triton::upsample_mix", mutates_args=())
def _triton_upsample(latents: torch.Tensor, noise: torch.Tensor, sigma: float, factor: int,
                     bilinear: bool) -> torch.Tensor:
    from surf_accel.triton_kernels import latent_ops
    return latent_ops.upsample_mix(latents, noise, sigma, factor, bilinear)


@torch.library.custom_op("surf_accel_triton::guided_step", mutates_args=())
def _triton_guided(latents: torch.Tensor, v_cond: torch.Tensor, v_uncond: Optional[torch.Tensor],
                   guidance_scale: float, sigma: float, sigma_next: float) -> torch.Tensor:
    from surf_accel.triton_kernels import latent_ops
    return latent_ops.guided_step(latents, v_cond, v_uncond, guidance_scale, sigma, sigma_next)


_triton_reshift.register_fake(_fake_reshift)
_triton_upsample.register_fake(_fake_upsample)
_triton_guided.register_fake(_fake_guided)


def _compiled(name: str):
    """The TORCH_LIBRARY op; torch's dispatcher routes CPU tensors to C++ and CUDA ones to CUDA."""
    return lambda *args: getattr(torch.ops.surf_accel, name)(*args)


def _flag_mode(fn, flag_value: str):
    """Adapt (..., mode) to the kernels' boolean flag (``mode == flag_value``)."""
    return lambda *args, mode: fn(*args, mode == flag_value)


def _kernel_registered(name: str, key: str):
    """A requirement: the built extension may lack a kernel (e.g. an op added after the build)."""
    def check() -> str | None:
        if torch._C._dispatch_has_kernel_for_dispatch_key(f"surf_accel::{name}", key):
            return None
        return f"the built extension has no {key} kernel for {name}; rebuild surf_accel"
    return check


def _op(name: str, ref, triton_fn, flag_value: str | None) -> Op:
    compiled, tri = _compiled(name), triton_fn
    if flag_value is not None:
        compiled, tri = _flag_mode(compiled, flag_value), _flag_mode(tri, flag_value)
    return Op(
        name,
        impls={"torch": ref, "cpp": compiled, "cuda": compiled, "triton": tri},
        requires={"cpp": _kernel_registered(name, "CPU"), "cuda": _kernel_registered(name, "CUDA")},
    )


RESHIFT_DOWNSAMPLE = _op("reshift_downsample", reference.reshift_downsample, _triton_reshift, "paper")
UPSAMPLE_MIX = _op("upsample_mix", reference.upsample_mix, _triton_upsample, "bilinear")
GUIDED_STEP = _op("guided_step", reference.guided_step, _triton_guided, None)
OPS = {op.name: op for op in (RESHIFT_DOWNSAMPLE, UPSAMPLE_MIX, GUIDED_STEP)}


def reshift_downsample(
    latents: torch.Tensor,
    model_output: torch.Tensor,
    noise: torch.Tensor,
    sigma: float,
    sigma_new: float,
    factor: int,
    mode: str = "consistent",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Noise reshifting in one pass (docs/design.md 1.2).

    ``latents``, ``model_output``: ``(B, C, T, H, W)``; ``noise``: ``(B, C, T, H/factor, W/factor)``.
    Returns ``(1 - sigma_new) * avgpool_HW(latents - sigma * model_output, factor) + sigma_new * noise``
    (``mode="paper"`` drops the ``(1 - sigma_new)`` factor), in the dtype of ``latents``.
    """
    checks.check_latent("latents", latents)
    checks.check_latent("model_output", model_output)
    checks.check_latent("noise", noise)
    checks.check_same("latents", latents, {"model_output": model_output, "noise": noise})
    checks.check_shape("model_output", model_output, latents.shape, "it must match latents")
    checks.check_factor(factor)
    b, c, t, h, w = latents.shape
    if h % factor or w % factor:
        raise ValueError(f"factor {factor} must divide the latent height and width, got H={h}, W={w}")
    checks.check_shape("noise", noise, (b, c, t, h // factor, w // factor), f"latents downsampled by {factor}")
    checks.check_sigma("sigma", sigma)
    checks.check_sigma("sigma_new", sigma_new)
    checks.check_mode("mode", mode, RESHIFT_MODES)
    return RESHIFT_DOWNSAMPLE(latents, model_output, noise, float(sigma), float(sigma_new), factor,
                              mode=mode, device=latents.device, dtype=latents.dtype, backend=backend)


def upsample_mix(
    latents: torch.Tensor,
    noise: torch.Tensor,
    sigma: float,
    factor: int,
    mode: str = "nearest",
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Upsample over H and W by ``factor`` and mix with noise: ``(1 - sigma) * up(latents) + sigma * noise``.

    ``latents``: ``(B, C, T, H, W)``; ``noise``: ``(B, C, T, H*factor, W*factor)``. ``up`` matches
    ``F.interpolate(scale_factor=(1, factor, factor))`` with ``nearest`` or, for ``"bilinear"``,
    ``trilinear`` and ``align_corners=False``.
    """
    checks.check_latent("latents", latents)
    checks.check_latent("noise", noise)
    checks.check_same("latents", latents, {"noise": noise})
    checks.check_factor(factor)
    b, c, t, h, w = latents.shape
    checks.check_shape("noise", noise, (b, c, t, h * factor, w * factor), f"latents upsampled by {factor}")
    checks.check_sigma("sigma", sigma)
    checks.check_mode("mode", mode, UPSAMPLE_MODES)
    return UPSAMPLE_MIX(latents, noise, float(sigma), factor,
                        mode=mode, device=latents.device, dtype=latents.dtype, backend=backend)


def guided_step(
    latents: torch.Tensor,
    v_cond: torch.Tensor,
    v_uncond: torch.Tensor | None,
    guidance_scale: float,
    sigma: float,
    sigma_next: float,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """Classifier-free guidance and the flow-matching Euler update in one pass.

    All tensors ``(B, C, T, H, W)`` of one shape. Returns
    ``latents + (sigma_next - sigma) * (v_uncond + guidance_scale * (v_cond - v_uncond))``;
    ``v_uncond=None`` means no guidance (``guidance_scale`` unused).
    """
    checks.check_latent("latents", latents)
    checks.check_latent("v_cond", v_cond)
    tensors = {"v_cond": v_cond}
    if v_uncond is not None:
        checks.check_latent("v_uncond", v_uncond)
        tensors["v_uncond"] = v_uncond
    checks.check_same("latents", latents, tensors)
    for name, t in tensors.items():
        checks.check_shape(name, t, latents.shape, "it must match latents")
    checks.check_finite_scalar("guidance_scale", guidance_scale)
    checks.check_sigma("sigma", sigma)
    checks.check_sigma("sigma_next", sigma_next)
    return GUIDED_STEP(latents, v_cond, v_uncond, float(guidance_scale), float(sigma), float(sigma_next),
                       device=latents.device, dtype=latents.dtype, backend=backend)
