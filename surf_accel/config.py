"""`SurfConfig`: what SURF does to one generation call (docs/design.md 1.2, 1.3), frozen and validated.

Step counts follow the call: the preview runs ``preview_fraction`` of the call's
``num_inference_steps``, switches to the low resolution after ``switch_fraction`` of the preview's
steps and refines for ``refine_fraction`` of the call's steps; ``preview_steps``, ``switch_step`` and
``refine_steps`` fix a count instead. Every default traces to the paper (SURF, CVPR 2026) or to a
measurement recorded in the repo. The paper compares with Wan2.1's default 50-step call and runs
a 40-step preview switching after step 10, then 10 refine steps, so for a 50-step call:

- ``preview_fraction=0.8``: 40 of the call's 50 steps.
- ``switch_fraction=0.25``: 10 of the 40 preview steps at the optimal resolution (layout settles by
  step 10; k = 5 breaks layout, k = 30 is slow).
- ``refine_fraction=0.2``: 10 refine steps for a 50-step call (8 costs a little quality). A trained
  ``Refiner`` takes its own ``num_steps`` unless ``refine_steps`` is set.
- ``downsample=2``: the paper's factor per spatial axis (4x fewer tokens, frames unchanged).
- ``handoff="pixel"``: the paper's mapping (VAE decode, resize, VAE encode).
- ``reshift="consistent"``: docs/design.md 1.2 (the paper's literal form mis-states the SNR; kept as
  ``"paper"``).
- ``refine_start=0.7``: the training-free refiner is beyond the paper; on the toy world 0.7 and 0.5
  are indistinguishable (benchmarks/results/signature.md; 0.3 lost colour in an earlier run).
- ``transformer_refine_start=0.3``: a smaller transformer of the family refining training-free keeps
  more of the base model's preview: on the toy world its sibling (a fifth of the base's layers x width)
  lost colour from 0.7 (92.7% against the base refine's 99.0%) and kept it from 0.3 (97.9%, layout
  distance 0.070 against 0.097; benchmarks/results/signature_sibling.md). Unmeasured on real weights.
- ``refine_expert="low"``: two-expert pipelines (Wan2.2 A14B) refine with the low-noise expert, the
  one trained for the range below the boundary where a refine from 0.7 runs (docs/design.md 4; its
  quality against the high-noise expert is not measured: no Wan2.2 weights here).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    from surf_accel.ops.sparse_attention import SparsePattern

# "consistent": (1 - s_low) down(x0) + s_low eps (docs/design.md 1.2); "paper": down(x0) + s_k eps with the
# preview schedule's s_k (the paper as written); "additive_low": down(x0) + s_low eps (neither: the
# paper's form at the low schedule's level, what an earlier "paper" mode computed).
RESHIFT_MODES = ("consistent", "paper", "additive_low")
RENOISE_MODES = ("fresh", "predicted")
HANDOFF_MODES = ("pixel", "latent")
LATENT_RESIZE_MODES = ("nearest", "bilinear")
SHIFT_RULES = ("sqrt_tokens", "constant")
STEP_PRECISIONS = ("pipeline", "float32")
# two-expert pipelines (Wan2.2 A14B): which expert the training-free refine runs
REFINE_EXPERTS = ("low", "high", "route")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SurfConfig:
    """How a patched pipeline generates: preview (optimal resolution, then low resolution after
    noise reshifting) and refine (handoff to the request's size, then a refiner).

    Step counts (``N`` = the call's ``num_inference_steps``)
    ---------------------------------------------------------
    preview_steps: steps of the preview schedule; ``None`` = ``round(preview_fraction * N)``.
    preview_fraction: see ``preview_steps``; 1.0 = the call's own steps, 0.8 = the paper's 40 of 50.
    switch_step: steps run at ``optimal_size`` before reshifting to the low resolution; ``None`` =
        ``round(switch_fraction * preview steps)`` (at least 1). Equal to the preview's steps (or
        ``switch_fraction=1``) means no switch.
    switch_fraction: see ``switch_step``; the paper's 10 of 40 is 0.25.
    refine_steps: refiner steps at the request's size; 0 = no refine (the preview, decoded at its
        own size, is the output); ``None`` = a trained ``Refiner``'s ``num_steps``, else
        ``round(refine_fraction * N)`` (at least 1 unless the fraction is 0).
    refine_fraction: see ``refine_steps``; the paper's 10 refine steps for a 50-step call is 0.2.

    Other fields
    ------------
    optimal_size: ``(height, width)`` in pixels of the preview's first steps; ``None`` = the model
        family's optimal (training) resolution with the request's aspect ratio, or the request's own
        size where that would be larger than the request; ``"request"`` = the request's size.
    downsample: spatial factor (per axis, latent space) of the low-resolution part; 1 = no
        low-resolution part (no switch whatever ``switch_step`` says).
    reshift: ``"consistent"``, ``"paper"`` or ``"additive_low"`` (see ``RESHIFT_MODES``).
    renoise: ``"fresh"`` Gaussian noise at the switch, or ``"predicted"`` (the model's own noise
        estimate, area-pooled and rescaled to unit variance).
    handoff: ``"pixel"`` (decode, resize frames, encode) or ``"latent"`` (resize the latent).
    latent_resize: interpolation of the ``"latent"`` handoff.
    refine_start: noise level ``s*`` the training-free refiner starts from (``(1-s*) z_lr + s* eps``).
        A trained refiner ignores it (it starts at ``s = 1`` from ``z_lr`` itself).
    transformer_refine_start: ``refine_start`` when another transformer of the family refines
        (``patch(pipe, refiner=<transformer>)``); ``None``: ``refine_start``.
    refine_guidance: classifier-free guidance of the training-free refiner; ``None`` = the call's.
    window: shifted-window size ``(wt, wh, ww)`` in tokens for the refine stage, or ``None``.
    preview_attention: a ``surf_accel.integrations.accelerators.sparse_attention.SparsePattern`` for
        the preview stages' self-attention (sliding-tile local + global, flex_attention block masks
        rebuilt per resolution), or ``None``: the preview keeps the transformer's own processors and
        attention backend (docs/design.md 4.1).
    shift_rule: how the flow shift follows resolution. ``"sqrt_tokens"``: the pipeline's scheduler
        shift holds at the request's token count and scales with ``sqrt(tokens / request_tokens)``
        (the resolution-dependent shift of SD3; on Wan2.1 it maps 5.0 at 720p to 3.3 at 480p,
        diffusers' example uses 5.0 and 3.0), floored at 1 (a shift below 1 would put the schedule
        below the linear one). ``"constant"``: the scheduler's shift everywhere.
    shifts: explicit flow shifts ``(preview, preview_low, refine)`` (>= 1) overriding ``shift_rule``
        where not ``None`` (e.g. the shifts a model was trained with at those sizes).
    step_precision: ``"pipeline"``: every scheduler step as the unpatched pipeline computes it (CFG
        in the transformer's dtype, the pipeline scheduler's own ``step``, latents in the dtype it
        returns), so a stage at the request's size reproduces the pipeline bit for bit;
        ``"float32"``: latents stay float32 between steps and CFG + Euler run fused in float32
        (``ops.guided_step``). Reshift and handoff always compute in float32.
    refine_expert: two-expert pipelines only (Wan2.2 A14B: ``transformer`` for timesteps at or above
        ``boundary_ratio * 1000``, ``transformer_2`` below): the model of the training-free refine.
        ``"low"`` (default): the low-noise expert ``transformer_2`` with ``guidance_scale_2``, trained for
        the low-noise range a refine covers; ``"high"``: the high-noise expert with ``guidance_scale``;
        ``"route"``: each refine step by its timestep, as every preview step is. Single-model pipelines
        have no experts to choose from and ignore it.
    """

    optimal_size: Union[None, str, tuple[int, int]] = None
    preview_steps: Optional[int] = None
    preview_fraction: float = 0.8
    switch_step: Optional[int] = None
    switch_fraction: float = 0.25
    downsample: int = 2
    reshift: str = "consistent"
    renoise: str = "fresh"
    handoff: str = "pixel"
    latent_resize: str = "bilinear"
    refine_steps: Optional[int] = None
    refine_fraction: float = 0.2
    refine_start: float = 0.7
    transformer_refine_start: Optional[float] = 0.3
    refine_guidance: Optional[float] = None
    window: Optional[tuple[int, int, int]] = None
    preview_attention: Optional["SparsePattern"] = None
    shift_rule: str = "sqrt_tokens"
    shifts: Optional[tuple[Optional[float], Optional[float], Optional[float]]] = None
    step_precision: str = "pipeline"
    refine_expert: str = "low"
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
        if self.refine_steps is not None and not (_is_int(self.refine_steps) and self.refine_steps >= 0):
            raise ValueError(f"refine_steps must be None or an int >= 0 (0 = no refine), got {self.refine_steps!r}")
        for name, lo, lo_open in (("preview_fraction", 0.0, True), ("switch_fraction", 0.0, True),
                                  ("refine_fraction", 0.0, False)):
            v = getattr(self, name)
            if not (_is_real(v) and (v > lo if lo_open else v >= lo) and v <= 1.0):
                raise ValueError(f"{name} must be a number in {'(' if lo_open else '['}0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        if not (_is_int(self.downsample) and self.downsample >= 1):
            raise ValueError(f"downsample must be an int >= 1, got {self.downsample!r}")
        for name, value, allowed in (("reshift", self.reshift, RESHIFT_MODES),
                                     ("renoise", self.renoise, RENOISE_MODES),
                                     ("handoff", self.handoff, HANDOFF_MODES),
                                     ("latent_resize", self.latent_resize, LATENT_RESIZE_MODES),
                                     ("shift_rule", self.shift_rule, SHIFT_RULES),
                                     ("step_precision", self.step_precision, STEP_PRECISIONS),
                                     ("refine_expert", self.refine_expert, REFINE_EXPERTS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if not (_is_real(self.refine_start) and 0.0 < self.refine_start <= 1.0):
            raise ValueError(f"refine_start must be a noise level in (0, 1], got {self.refine_start!r}")
        object.__setattr__(self, "refine_start", float(self.refine_start))
        t = self.transformer_refine_start
        if t is not None:
            if not (_is_real(t) and 0.0 < t <= 1.0):
                raise ValueError(f"transformer_refine_start must be None or a noise level in (0, 1], got {t!r}")
            object.__setattr__(self, "transformer_refine_start", float(t))
        if self.refine_guidance is not None and not _is_real(self.refine_guidance):
            raise ValueError(f"refine_guidance must be None or a finite number, got {self.refine_guidance!r}")
        if self.window is not None:
            w = self.window
            if not (isinstance(w, (tuple, list)) and len(w) == 3 and all(_is_int(v) and v >= 1 for v in w)):
                raise ValueError(f"window must be None or (wt, wh, ww) of ints >= 1 (tokens after patchify), got {w!r}")
            object.__setattr__(self, "window", tuple(int(v) for v in w))
        if self.preview_attention is not None:
            # the ops package loads torch; a SurfConfig without sparse preview attention does not need it
            from surf_accel.ops.sparse_attention import SparsePattern

            if not isinstance(self.preview_attention, SparsePattern):
                raise ValueError("preview_attention must be None or a SparsePattern(tile, window, global_frames) "
                                 "from surf_accel.integrations.accelerators.sparse_attention, got "
                                 f"{self.preview_attention!r}")
        if self.shifts is not None:
            sh = self.shifts
            if not (isinstance(sh, (tuple, list)) and len(sh) == 3 and all(
                    v is None or (_is_real(v) and v >= 1.0) for v in sh)):
                raise ValueError(f"shifts must be None or (preview, preview_low, refine) of numbers >= 1 or None "
                                 f"(a flow shift below 1 inverts the schedule's emphasis), got {sh!r}")
            object.__setattr__(self, "shifts", tuple(None if v is None else float(v) for v in sh))
        if self.window is not None and (self.refine_steps == 0 or (self.refine_steps is None
                                                                   and self.refine_fraction == 0.0)):
            raise ValueError("window applies to the refine stage, but refine_steps=0 / refine_fraction=0 disables it")

    # ------------------------------------------------------------------ step counts
    def step_counts(self, num_inference_steps: int, trained_refiner_steps: Optional[int] = None
                    ) -> tuple[int, int, int]:
        """``(preview steps, switch step, refine steps)`` for a call of ``num_inference_steps``.

        ``trained_refiner_steps``: a trained ``Refiner``'s ``num_steps``, used when ``refine_steps``
        is ``None``. Raises ``ValueError`` where an explicit count does not fit the call.
        """
        n = self.preview_steps if self.preview_steps is not None else max(
            1, round(self.preview_fraction * num_inference_steps))
        if self.switch_step is not None:
            k = self.switch_step
            if k > n:
                raise ValueError(f"switch_step ({k}) must be <= the preview's steps ({n} for a call of "
                                 f"{num_inference_steps} steps); set preview_steps or call with more steps")
        else:
            k = min(n, max(1, round(self.switch_fraction * n)))
        if self.refine_steps is not None:
            m = self.refine_steps
        elif trained_refiner_steps is not None:
            m = trained_refiner_steps
        else:
            m = 0 if self.refine_fraction == 0.0 else max(1, round(self.refine_fraction * num_inference_steps))
        return n, k, m

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes) -> "SurfConfig":
        """A copy with some fields changed (validated again); the preset name is dropped."""
        changes.setdefault("name", None)
        return dataclasses.replace(self, **changes)

    @classmethod
    def identity(cls) -> "SurfConfig":
        """Request's size and steps, no switch, no refine, the pipeline's arithmetic: reproduces the
        unpatched pipeline bit for bit."""
        return cls(optimal_size="request", preview_fraction=1.0, switch_fraction=1.0, downsample=1, refine_steps=0,
                   shift_rule="constant", step_precision="pipeline", name="identity")

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


# The presets follow the toy-world signature table (benchmarks/results/signature.md: 32 prompts x 3
# seeds, 95% intervals): the paper's reshift keeps the optimal-size run's layout (distance 0.054
# [0.045, 0.064]) and direction (91.7%) where the consistent one loses them (0.214, 77.1%); the
# additive_low form is indistinguishable from the paper's, which the presets use as the published
# formula. Both feed the low stage a cleaner latent than its schedule expects (~49x the SNR on the toy,
# ~30x for Wan2.1 at 720p): measured on the toy only. A later switch keeps the layout closer (switch 10
# of 25: 0.036 [0.031, 0.042]; 6 of 25: 0.054), an earlier one loses it (3 of 25: 0.100). Pixel and
# latent handoff, fresh and predicted re-noise are indistinguishable there. Fractions: the paper's plan
# for Wan2.1's default 50-step call (40 preview steps switching after 10, 10 refine steps).
PRESETS: dict[str, tuple[SurfConfig, str]] = {
    "paper": (
        SurfConfig(reshift="paper", name="paper"),
        "the paper's plan: 80% of the call's steps as the preview (40 of 50), switching after the first 25% of them "
        "(10 of 40), factor 2, pixel handoff, refine for 20% of the call's steps (10 of 50)",
    ),
    "fast": (
        SurfConfig(preview_fraction=0.6, reshift="paper", handoff="latent", refine_fraction=0.16, name="fast"),
        "fewer steps: 60% of the call's steps as the preview (30 of 50), switching after 25% of them (8), latent "
        "handoff (no VAE round trip; as good as pixel on the toy), refine for 16% of the call's steps (8 of 50; the "
        "paper: 8 costs a little quality)",
    ),
    "quality": (
        SurfConfig(preview_fraction=1.0, switch_fraction=0.4, reshift="paper", refine_fraction=0.24, name="quality"),
        "closer to the optimal-size run: all of the call's steps as the preview (50 of 50) switching after 40% "
        "(20; on the toy a switch at 40% kept the layout closer than at 24%), refine for 24% of the call's steps "
        "(12 of 50)",
    ),
    "identity": (SurfConfig.identity(), "no acceleration: reproduces the unpatched pipeline (for checks)"),
}


def register_preset(name: str, config: SurfConfig, description: str) -> None:
    """Add a named preset (a family's own, from ``surf_accel.register_family``)."""
    if not isinstance(config, SurfConfig):
        raise TypeError(f"preset {name!r} must be a SurfConfig, got {type(config).__name__}")
    PRESETS[name] = (config, description)
