"""Float64 oracles for the latent ops, written independently of surf_accel.ops.reference
(reshape-means and index gathers rather than the pooling/interpolation calls the reference uses)."""

import torch


def reshift_downsample(latents, model_output, noise, sigma, sigma_new, factor, mode):
    x0 = latents.double() - sigma * model_output.double()
    b, c, t, h, w = x0.shape
    pooled = x0.reshape(b, c, t, h // factor, factor, w // factor, factor).mean(dim=(4, 6))
    scale = 1.0 if mode == "paper" else 1.0 - sigma_new
    return scale * pooled + sigma_new * noise.double()


def _bilinear_index(n_out: int, n_in: int, factor: int):
    dst = torch.arange(n_out, dtype=torch.float64)
    src = ((dst + 0.5) / factor - 0.5).clamp(min=0.0)
    i0 = src.floor().long()
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, src - i0


def upsample(latents, factor, mode):
    x = latents.double()
    h, w = x.shape[-2:]
    if mode == "nearest":
        rows = torch.arange(h * factor) // factor
        cols = torch.arange(w * factor) // factor
        return x[..., rows, :][..., cols]
    r0, r1, rw = _bilinear_index(h * factor, h, factor)
    c0, c1, cw = _bilinear_index(w * factor, w, factor)
    x = x[..., r0, :] * (1 - rw)[:, None] + x[..., r1, :] * rw[:, None]
    return x[..., c0] * (1 - cw) + x[..., c1] * cw


def upsample_mix(latents, noise, sigma, factor, mode):
    return (1.0 - sigma) * upsample(latents, factor, mode) + sigma * noise.double()


def guided_step(latents, v_cond, v_uncond, guidance_scale, sigma, sigma_next):
    v = v_cond.double()
    if v_uncond is not None:
        v = v_uncond.double() + guidance_scale * (v - v_uncond.double())
    return latents.double() + (sigma_next - sigma) * v
