"""Signature metrics for the toy world (docs/design.md 6).

Video layout: WanPipeline's ``output_type="np"`` frames, (B, T, H, W, 3) floats in [0, 1], or one
video (T, H, W, 3).

- :mod:`.detect`: per video — colour, shape, object track, motion direction, smoothness.
- :mod:`.aggregate`: over a prompt set — semantic and motion accuracy, layout statistics,
  same-seed layout agreement.
- :mod:`.similarity`: PSNR / SSIM against a reference video.
"""

from .aggregate import bootstrap_ci, compare_layout, evaluate, layout_statistics
from .detect import VideoSignature, classify_colour, detect_batch, detect_video, object_weights
from .similarity import psnr, similarity, ssim

__all__ = [
    "VideoSignature", "bootstrap_ci", "classify_colour", "compare_layout", "detect_batch", "detect_video", "evaluate",
    "layout_statistics", "object_weights", "psnr", "similarity", "ssim",
]
