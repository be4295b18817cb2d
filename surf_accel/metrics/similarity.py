"""Same-seed similarity of two videos: PSNR and SSIM.

Inputs: videos as (T, H, W, 3) or batches (B, T, H, W, 3), floats in [0, 1] (WanPipeline's
``output_type="np"`` layout), numpy or torch. Both must have the same shape unless ``resize=True``,
which area-resizes the second to the first's frame size (for comparing a run at another resolution).
SSIM is the usual Gaussian-window SSIM (11 taps, sigma 1.5, K1 0.01, K2 0.03) per frame and
channel, averaged; windows are shrunk to the frame for tiny frames.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _to_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        a = np.asarray(x)
        t = torch.from_numpy(a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32))
    t = t.double()
    if t.ndim == 4:
        t = t[None]
    if t.ndim != 5 or t.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) or (B, T, H, W, 3), got {tuple(t.shape)}")
    return t


def _frames(t: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) -> (B*T, 3, H, W)."""
    b, n, h, w, c = t.shape
    return t.reshape(b * n, h, w, c).permute(0, 3, 1, 2)


def _pair(a, b, resize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _to_tensor(a), _to_tensor(b)
    if ta.shape != tb.shape:
        if resize and ta.shape[:2] == tb.shape[:2]:
            fb = F.interpolate(_frames(tb), size=ta.shape[2:4], mode="area" if tb.shape[2] > ta.shape[2] else "bilinear")
            tb = fb.permute(0, 2, 3, 1).reshape(ta.shape)
        else:
            raise ValueError(f"shape mismatch {tuple(ta.shape)} vs {tuple(tb.shape)} (resize={resize})")
    return ta, tb


def psnr(a, b, data_range: float = 1.0, resize: bool = False) -> float:
    """PSNR in dB over all frames (inf for identical videos)."""
    ta, tb = _pair(a, b, resize)
    mse = (ta - tb).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def _gauss(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x * x / (2 * sigma * sigma))
    return g / g.sum()


def ssim(a, b, data_range: float = 1.0, resize: bool = False, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM over frames and channels."""
    ta, tb = _pair(a, b, resize)
    fa, fb = _frames(ta), _frames(tb)
    h, w = fa.shape[-2:]
    size = min(window, h, w)
    if size % 2 == 0:
        size -= 1
    g = _gauss(size, sigma * size / window)
    k = (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()

    def blur(x):
        return F.conv2d(x, k, groups=3)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(fa), blur(fb)
    saa = blur(fa * fa) - mu_a ** 2
    sbb = blur(fb * fb) - mu_b ** 2
    sab = blur(fa * fb) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * sab + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2)
    return (num / den).mean().item()


def similarity(a, b, resize: bool = False) -> dict:
    """``{"psnr": dB, "ssim": value}`` of ``b`` against reference ``a``."""
    return {"psnr": psnr(a, b, resize=resize), "ssim": ssim(a, b, resize=resize)}
