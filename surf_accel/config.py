"""`SurfConfig`: what SURF does to one generation call (SPEC 1.2, 1.3), frozen and validated.

Every default traces to the paper (SURF, CVPR 2026) or to a measurement recorded in the repo:

- ``switch_step=10`` of ``preview_steps=40``: the paper's preview (layout settles by step 10;
  k = 5 breaks layout, k = 30 is slow).
- ``downsample=2``: the paper's factor per spatial axis (4x fewer tokens, frames unchanged).
- ``handoff="pixel"``: the paper's mapping (VAE decode, resize, VAE encode).
- ``refine_steps=10``: the paper's trained refiner takes 10 Euler steps (8 costs a little quality).
- ``reshift="consistent"``: SPEC 1.2 (the paper's literal form mis-states the SNR; kept as
  ``"paper"``).
- ``refine_start=0.7``: the training-free refiner is beyond the paper; on the toy world (same 5
  refine steps) 0.7 kept colour 100% and direction 84.4% where 0.5 gave 100% / 75.0% and 0.3
  90.6% / 75.0%, at the same layout distance (benchmarks/results/signature.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Union

RESHIFT_MODES = ("consistent", "paper")
RENOISE_MODES = ("fresh", "predicted")
HANDOFF_MODES = ("pixel", "latent")
LATENT_RESIZE_MODES = ("nearest", "bilinear")
SHIFT_RULES = ("sqrt_tokens", "constant")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class SurfConfig:
    """How a patched pipeline generates: preview (optimal resolution, then low resolution after
    noise reshifting) and refine (handoff to the request's size, then a refiner).

    Fields
    ------
    optimal_size: ``(height, width)`` in pixels of the preview's first ``switch_step`` steps;
        ``None`` = the model family's optimal (training) resolution with the request's aspect ratio;
        ``"request"`` = the request's own size.
    preview_steps: steps of the preview schedule; ``None`` = the call's ``num_inference_steps``.
    switch_step: steps run at ``optimal_size`` before reshifting to the low resolution;
        ``switch_step == preview_steps`` means no switch; ``None`` = ``preview_steps`` (no switch).
    downsample: spatial factor (per axis, latent space) of the low-resolution part; 1 = no
        low-resolution part (no switch whatever ``switch_step`` says).
    reshift: ``"consistent"`` (default) or ``"paper"`` (drops the ``(1 - s)`` factor).
    renoise: ``"fresh"`` Gaussian noise at the switch, or ``"predicted"`` (the model's own noise
        estimate, area-pooled and rescaled to unit variance).
    handoff: ``"pixel"`` (decode, resize frames, encode) or ``"latent"`` (resize the latent).
    latent_resize: interpolation of the ``"latent"`` handoff.
    refine_steps: refiner steps at the request's size; 0 = no refine: the preview, decoded at its
        own size, is the output.
    refine_start: noise level ``s*`` the training-free refiner starts from (``(1-s*) z_lr + s* eps``).
        A trained refiner ignores it (it starts at ``s = 1`` from ``z_lr`` itself).
    refine_guidance: classifier-free guidance of the training-free refiner; ``None`` = the call's.
    window: shifted-window size ``(wt, wh, ww)`` in tokens for the refine stage, or ``None``.
    shift_rule: how the flow shift follows resolution. ``"sqrt_tokens"``: the pipeline's scheduler
        shift holds at the request's token count and scales with ``sqrt(tokens / request_tokens)``
        (the resolution-dependent shift of SD3; on Wan2.1 it maps 5.0 at 720p to 3.3 at 480p,
        diffusers' example uses 5.0 and 3.0). ``"constant"``: the scheduler's shift everywhere.
    shifts: explicit flow shifts ``(preview, preview_low, refine)`` overriding ``shift_rule`` where
        not ``None`` (e.g. the shifts a model was trained with at those sizes).
    """

    optimal_size: Union[None, str, tuple[int, int]] = None
    preview_steps: Optional[int] = 40
    switch_step: Optional[int] = 10
    downsample: int = 2
    reshift: str = "consistent"
    renoise: str = "fresh"
    handoff: str = "pixel"
    latent_resize: str = "bilinear"
    refine_steps: int = 10
    refine_start: float = 0.7
    refine_guidance: Optional[float] = None
    window: Optional[tuple[int, int, int]] = None
    shift_rule: str = "sqrt_tokens"
    shifts: Optional[tuple[Optional[float], Optional[float], Optional[float]]] = None
    name: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        if self.optimal_size is not None and self.optimal_size != "request":
            size = self.optimal_size
            if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
                raise ValueError(f"optimal_size must be None, 'request' or (height, width) of positive ints, "
                                 f"got {size!r}")
            object.__setattr__(self, "optimal_size", (int(size[0]), int(size[1])))
        if self.preview_steps is not None and not (_is_int(self.preview_steps) and self.preview_steps >= 1):
            raise ValueError(f"preview_steps must be None or an int >= 1, got {self.preview_steps!r}")
        if self.switch_step is not None:
            if not (_is_int(self.switch_step) and self.switch_step >= 1):
                raise ValueError(f"switch_step must be None or an int >= 1 (at least one step at the optimal "
                                 f"resolution), got {self.switch_step!r}")
            if self.preview_steps is not None and self.switch_step > self.preview_steps:
                raise ValueError(f"switch_step ({self.switch_step}) must be <= preview_steps ({self.preview_steps}); "
                                 "switch_step == preview_steps means no switch")
        if not (_is_int(self.downsample) and self.downsample >= 1):
            raise ValueError(f"downsample must be an int >= 1, got {self.downsample!r}")
        for name, value, allowed in (("reshift", self.reshift, RESHIFT_MODES),
                                     ("renoise", self.renoise, RENOISE_MODES),
                                     ("handoff", self.handoff, HANDOFF_MODES),
                                     ("latent_resize", self.latent_resize, LATENT_RESIZE_MODES),
                                     ("shift_rule", self.shift_rule, SHIFT_RULES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not (_is_int(self.refine_steps) and self.refine_steps >= 0):
            raise ValueError(f"refine_steps must be an int >= 0 (0 = no refine), got {self.refine_steps!r}")
        if not (isinstance(self.refine_start, (int, float)) and not isinstance(self.refine_start, bool)
                and math.isfinite(self.refine_start) and 0.0 < self.refine_start <= 1.0):
            raise ValueError(f"refine_start must be a noise level in (0, 1], got {self.refine_start!r}")
        object.__setattr__(self, "refine_start", float(self.refine_start))
        if self.refine_guidance is not None and not (
                isinstance(self.refine_guidance, (int, float)) and not isinstance(self.refine_guidance, bool)
                and math.isfinite(self.refine_guidance)):
            raise ValueError(f"refine_guidance must be None or a finite number, got {self.refine_guidance!r}")
        if self.window is not None:
            w = self.window
            if not (isinstance(w, (tuple, list)) and len(w) == 3 and all(_is_int(v) and v >= 1 for v in w)):
                raise ValueError(f"window must be None or (wt, wh, ww) of ints >= 1 (tokens after patchify), got {w!r}")
            object.__setattr__(self, "window", tuple(int(v) for v in w))
        if self.shifts is not None:
            sh = self.shifts
            if not (isinstance(sh, (tuple, list)) and len(sh) == 3 and all(
                    v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                                  and v > 0) for v in sh)):
                raise ValueError(f"shifts must be None or (preview, preview_low, refine) of positive numbers or "
                                 f"None, got {sh!r}")
            object.__setattr__(self, "shifts", tuple(None if v is None else float(v) for v in sh))
        if self.window is not None and self.refine_steps == 0:
            raise ValueError("window applies to the refine stage, but refine_steps=0 disables it")

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes) -> "SurfConfig":
        """A copy with some fields changed (validated again); the preset name is dropped."""
        changes.setdefault("name", None)
        return dataclasses.replace(self, **changes)

    @classmethod
    def identity(cls) -> "SurfConfig":
        """Request's size for every step, no switch, no refine: reproduces the unpatched pipeline."""
        return cls(optimal_size="request", preview_steps=None, switch_step=None, downsample=1, refine_steps=0,
                   shift_rule="constant", name="identity")

    @classmethod
    def preset(cls, name: str) -> "SurfConfig":
        """A named configuration; see ``PRESETS`` for what each one is and where its numbers come from."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}")
        return PRESETS[name][0]

    @staticmethod
    def presets() -> dict[str, str]:
        """Preset names and their one-line descriptions."""
        return {k: v[1] for k, v in PRESETS.items()}


# Every SURF preset uses the paper's literal reshift (``x0 + s eps``): on the toy world it kept the
# optimal-size run's layout far better than the consistent form (benchmarks/results/signature.md:
# mean track distance 0.058 vs 0.216, direction 96.9% vs 75.0%), although the consistent form is the
# field's default (SPEC 1.2). Only measured on the toy Wan; re-measure on real models.
PRESETS: dict[str, tuple[SurfConfig, str]] = {
    "paper": (
        SurfConfig(reshift="paper", name="paper"),
        "the paper's setting: 10 of 40 preview steps at the optimal resolution, factor 2, the paper's "
        "reshift, pixel handoff, 10 refine steps",
    ),
    "fast": (
        SurfConfig(preview_steps=30, switch_step=8, downsample=2, reshift="paper", handoff="latent", refine_steps=8,
                   name="fast"),
        "fewer steps: 30 preview steps (switch at 8, the same ~25% as the paper's 10/40), latent handoff "
        "(no VAE round trip), 8 refine steps (the paper: 8 costs a little quality)",
    ),
    "quality": (
        SurfConfig(preview_steps=50, switch_step=15, downsample=2, reshift="paper", handoff="pixel", refine_steps=12,
                   renoise="predicted", name="quality"),
        "more steps: 50 preview steps (Wan2.1's default count) switching at 15 (30%, later than the paper's "
        "25%; k = 30 of 40 was slow in the paper), predicted re-noise, 12 refine steps",
    ),
    "identity": (SurfConfig.identity(), "no acceleration: reproduces the unpatched pipeline (for checks)"),
    # HunyuanVideo 720p, 129 frames (33 latent frames): the paper's schedule plus its temporal-only
    # refine windows (SPEC 1.3). W_t = 11 tiles the 33 latent frames into 3 whole windows (shifted
    # blocks: 6 + 11 + 11 + 5); the paper gives no W_t for HunyuanVideo and the window's effect on the
    # training-free refiner's quality is not measured yet. 1000 tokens = the whole H and W axes.
    "hunyuan-paper": (
        SurfConfig(reshift="paper", window=(11, 1000, 1000), name="hunyuan-paper"),
        "the paper's setting for HunyuanVideo 720p/129 frames (HunyuanVideoPipeline's default preset): 10 of 40 "
        "preview steps at the optimal resolution, factor 2, pixel handoff, 10 refine steps with temporal "
        "windows of 11 latent frames (whole H and W)",
    ),
}
