"""The stage planner: a pure function from (request, model family, scheduler, config) to stages.

No pipeline, no tensors: everything here is numbers, so it is unit-tested on its own and used by
the cost model as well as by the runner.

Sigma schedules. A flow-matching schedule is a time grid ``t`` in (0, 1] mapped through the time
shift ``s = shift * t / (1 + (shift - 1) * t)`` (docs/design.md 1.1). The grid is the pipeline scheduler's own
(diffusers' FlowMatchEulerDiscreteScheduler and UniPCMultistepScheduler build different ones), so
a stage at the request's size with the scheduler's shift reproduces the unpatched schedule exactly.
Each resolution gets its own shift (``SurfConfig.shift_rule``); the resolution switch keeps the
time ``t_k`` and changes the noise level to the low-resolution schedule's ``s_low(t_k)`` (docs/design.md 1.2).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from surf_accel.config import SurfConfig

SCHEDULER_KINDS = ("euler", "unipc")
TIME_GRIDS = ("scheduler", "uniform")


@dataclass(frozen=True)
class FamilySpec:
    """What the planner needs to know about a model family and one pipeline's geometry."""

    name: str
    vae_scale_spatial: int
    vae_scale_temporal: int
    patch_size: tuple[int, int, int]
    optimal_area: int  # pixels (height * width) of the family's training resolution
    rope_max_seq_len: Optional[int] = None  # every patch-grid axis must be below this

    @property
    def pixel_grid(self) -> int:
        """Pixel sizes must be multiples of this (VAE x patch)."""
        return self.vae_scale_spatial * max(self.patch_size[1], self.patch_size[2])


@dataclass(frozen=True)
class SchedulerSpec:
    """The pipeline scheduler's time grid and shift (see ``surf_accel.schedulers.scheduler_spec``)."""

    kind: str  # "euler" (FlowMatchEulerDiscreteScheduler) or "unipc" (UniPCMultistepScheduler)
    shift: float
    num_train_timesteps: int = 1000
    sigma_max: float = 1.0  # euler only: the grid's end points (diffusers builds them shifted once)
    sigma_min: float = 1e-3
    # "scheduler": the scheduler's own grid; "uniform": linspace(1, 0, n + 1)[:-1], the unshifted
    # sigmas a pipeline hands its scheduler (HunyuanVideoPipeline does)
    grid: str = "scheduler"

    def __post_init__(self):
        if self.kind not in SCHEDULER_KINDS:
            raise ValueError(f"scheduler kind must be one of {SCHEDULER_KINDS}, got {self.kind!r}")
        if self.grid not in TIME_GRIDS:
            raise ValueError(f"scheduler time grid must be one of {TIME_GRIDS}, got {self.grid!r}")
        if not (math.isfinite(self.shift) and self.shift > 0):
            raise ValueError(f"scheduler shift must be a positive number, got {self.shift!r}")

    def time_grid(self, n: int) -> np.ndarray:
        """The unshifted times of an ``n``-step schedule, float64, decreasing, as diffusers builds them."""
        T = self.num_train_timesteps
        if self.grid == "uniform":
            return np.linspace(1.0, 0.0, n + 1)[:-1]
        if self.kind == "euler":
            return np.linspace(self.sigma_max * T, self.sigma_min * T, n) / T
        return np.linspace(1.0, 1.0 / T, n + 1)[:-1]

    def shifted(self, t, shift: float) -> np.ndarray:
        """The noise levels of times ``t`` under ``shift``, rounded as the pipeline rounds them.

        A scheduler building its own grid shifts in float64 (then stores float32); a pipeline handing
        its scheduler explicit sigmas (``grid="uniform"``) has them cast to float32 first and shifted in
        float32. Returns float64 holding exactly the values the pipeline's scheduler would hold.
        """
        if self.grid == "uniform":
            t32 = np.asarray(t, dtype=np.float32)
            return (shift * t32 / (1 + (shift - 1) * t32)).astype(np.float32).astype(np.float64)
        return shift_sigmas(t, shift).astype(np.float32).astype(np.float64)


@dataclass(frozen=True)
class Request:
    """The call's geometry: pixel size, frames, steps and batch (already expanded by videos per prompt)."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float = 5.0


def shift_sigmas(t, shift: float) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_sigma(s: float, shift: float) -> float:
    """Inverse of the time shift: the ``t`` whose shifted noise level is ``s``."""
    return s / (shift - (shift - 1.0) * s)


@dataclass(frozen=True)
class Stage:
    """One resolution's worth of denoising steps.

    ``sigmas`` holds one noise level per model evaluation plus the level the stage ends at
    (``len(sigmas) == steps + 1``); for a stage that ends in a resolution switch the last entry is
    the next stage's first level (the reshift target), not a step the scheduler takes.
    """

    name: str  # "preview", "preview_low" or "refine"
    height: int  # pixels
    width: int
    latent_size: tuple[int, int, int]  # (frames, height, width) in latent space
    sigmas: tuple[float, ...]
    shift: float
    model: str  # "base" (pipeline transformer), "refiner_transformer" (same family), "trained_refiner"
    start: str  # "noise", "reshift" (from the previous stage) or "handoff" (preview -> target)
    step_offset: int  # global index of this stage's first step (callbacks, progress)
    window: Optional[tuple[int, int, int]] = None
    guidance: Optional[float] = None  # None = the call's guidance scale
    use_scheduler: bool = True  # False: plain Euler on the straight refiner path
    # start == "reshift": the noise coefficient of the re-noised latent (``SurfConfig.reshift``):
    # s_low(t_k) = sigmas[0] for "consistent"/"additive_low", the preview schedule's s_k for "paper"
    reshift_noise: Optional[float] = None

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    request: Request
    family: FamilySpec
    scheduler: SchedulerSpec
    config: SurfConfig
    messages: tuple[str, ...] = field(default=())  # what the plan chose (logged at INFO)
    warnings: tuple[str, ...] = field(default=())  # what a user would not expect (logged at WARNING)

    @property
    def output_stage(self) -> Stage:
        return self.stages[-1]

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def tokens(self, stage: Stage) -> int:
        return _patch_tokens(stage.latent_size, self.family)

    def describe(self) -> str:
        lines = []
        for s in self.stages:
            lines.append(f"{s.name:12s} {s.height}x{s.width} px, latent {s.latent_size}, {s.steps} steps, "
                         f"shift {s.shift:.3g}, sigma {s.sigmas[0]:.4f} -> {s.sigmas[-1]:.4f}, model {s.model}"
                         + (f", window {s.window}" if s.window else ""))
        return "\n".join(lines + list(self.messages) + [f"warning: {w}" for w in self.warnings])


def latent_frames(num_frames: int, family: FamilySpec) -> int:
    return (num_frames - 1) // family.vae_scale_temporal + 1


def _patch_tokens(latent_size: tuple[int, int, int], family: FamilySpec) -> int:
    """The video token count of a latent: the sequence diffusers' context parallelism splits."""
    pt, ph, pw = family.patch_size
    t, h, w = latent_size
    return math.ceil(t / pt) * (h // ph) * (w // pw)


def _round_to(x: float, g: int) -> int:
    return max(g, int(round(x / g)) * g)


def _check_on_grid(what: str, h: int, w: int, g: int):
    if h % g or w % g:
        def near(v):
            lo = max(g, v // g * g)
            return f"{lo} or {lo + g}" if lo != v else str(v)
        raise ValueError(f"{what} {h}x{w} is not on the {g}-pixel grid this plan needs (VAE x patch"
                         f"{' x downsample' if 'optimal' in what else ''}); use height {near(h)} and width "
                         f"{near(w)}")


def _check_request(request: Request, g: int) -> None:
    """Raise ``ValueError`` for a request that no plan can run: size off the ``g``-pixel grid, bad counts."""
    if not (isinstance(request.height, int) and isinstance(request.width, int)
            and request.height > 0 and request.width > 0):
        raise ValueError(f"height and width must be positive ints, got {request.height!r}, {request.width!r}")
    _check_on_grid("the requested size", request.height, request.width, g)
    if not (isinstance(request.num_frames, int) and request.num_frames >= 1):
        raise ValueError(f"num_frames must be an int >= 1, got {request.num_frames!r}")
    if not (isinstance(request.num_inference_steps, int) and request.num_inference_steps >= 1):
        raise ValueError(f"num_inference_steps must be an int >= 1, got {request.num_inference_steps!r}")


def _preview_size(request: Request, family: FamilySpec, config: SurfConfig, switch: bool, d: int,
                  messages: list[str], warnings: list[str]) -> tuple[int, int, bool, int, bool]:
    """The preview's (optimal) pixel size: ``(height, width, switch, d, chosen)``, ``chosen`` when the
    planner picked the size (``optimal_size=None``) and so may move it.

    A request too small for the switch's grid drops the low-resolution part (``switch`` False, ``d`` 1).
    """
    g_opt = family.pixel_grid * d
    if config.optimal_size == "request":
        oh, ow = request.height, request.width
        if switch:
            _check_on_grid("the requested size, used as optimal_size,", oh, ow, g_opt)
    elif config.optimal_size is None:
        aspect = request.width / request.height
        h0 = math.sqrt(family.optimal_area / aspect)
        w0 = h0 * aspect
        oh, ow = _round_to(h0, g_opt), _round_to(w0, g_opt)
        if oh > request.height or ow > request.width:
            # never plan more work than the call: preview at the request's size (on the plan's grid)
            nh, nw = request.height // g_opt * g_opt, request.width // g_opt * g_opt
            if min(nh, nw) == 0:  # too small for the switch's grid: no low-resolution part
                nh, nw, switch, d = request.height, request.width, False, 1
            warnings.append(f"the {family.name} optimal size at this aspect ratio, {oh}x{ow} px, is not below the "
                            f"request {request.height}x{request.width}: the preview runs at {nh}x{nw} px (the "
                            f"request on the {g_opt}-pixel grid{'' if switch else ', too small for a switch'}) "
                            "instead; pass optimal_size=(h, w) to choose")
            oh, ow = nh, nw
        else:
            messages.append(f"optimal size for {family.name} at the request's aspect ratio: {oh}x{ow} px "
                            f"(area {family.optimal_area} px snapped to the {g_opt}-pixel grid from "
                            f"{h0:.0f}x{w0:.0f})")
    else:
        oh, ow = config.optimal_size
        _check_on_grid("optimal_size", oh, ow, g_opt)
        if oh > request.height or ow > request.width:
            warnings.append(f"optimal_size {oh}x{ow} is larger than the request {request.height}x{request.width}: "
                            "the preview runs above the request's size and the refine stage goes down in resolution")
    return oh, ow, switch, d, config.optimal_size is None


def _stage_shift(scheduler: SchedulerSpec, config: SurfConfig, latent_hw: tuple[int, int], req_tokens: int,
                 which: int, what: str, warnings: list[str]) -> float:
    """The flow shift of stage ``which`` (0 preview, 1 preview_low, 2 refine) at latent size ``latent_hw``."""
    if config.shifts is not None and config.shifts[which] is not None:
        return float(config.shifts[which])
    if config.shift_rule == "constant":
        return float(scheduler.shift)
    shift = float(scheduler.shift * math.sqrt(latent_hw[0] * latent_hw[1] / req_tokens))
    if shift < 1.0 <= scheduler.shift:
        warnings.append(f"the sqrt_tokens rule gives the {what} stage a flow shift of {shift:.3g} (scheduler "
                        f"shift {scheduler.shift:g} at the request's size); floored at 1: below 1 the schedule "
                        "would spend its steps at low noise. Set SurfConfig.shifts to choose each stage's shift")
        shift = 1.0
    return shift


def _preview_stages(scheduler: SchedulerSpec, config: SurfConfig, n: int, k: int, switch: bool, d: int,
                    size: tuple[int, int], opt_latent: tuple[int, int, int], req_tokens: int,
                    warnings: list[str]) -> list[Stage]:
    """The ``n`` preview steps from noise at ``size``; with ``switch``, steps ``k..`` at ``size / d``
    after a reshift."""
    oh, ow = size
    t_grid = scheduler.time_grid(n)
    shift_opt = _stage_shift(scheduler, config, opt_latent[1:], req_tokens, 0, "preview", warnings)
    if not switch:
        sig = np.concatenate([scheduler.shifted(t_grid, shift_opt), [0.0]])
        return [Stage("preview", oh, ow, opt_latent, tuple(float(x) for x in sig), shift_opt, "base", "noise", 0)]
    low_latent = (opt_latent[0], opt_latent[1] // d, opt_latent[2] // d)
    shift_low = _stage_shift(scheduler, config, low_latent[1:], req_tokens, 1, "preview_low", warnings)
    low_sigmas = scheduler.shifted(t_grid[k:], shift_low)
    hi_sigmas = np.concatenate([scheduler.shifted(t_grid[:k], shift_opt), low_sigmas[:1]])
    # the paper's reshift noise: the preview schedule's own level at step k
    noise_k = float(scheduler.shifted(t_grid[k:k + 1], shift_opt)[0]) if config.reshift == "paper" \
        else float(low_sigmas[0])
    return [Stage("preview", oh, ow, opt_latent, tuple(float(x) for x in hi_sigmas), shift_opt,
                  "base", "noise", 0),
            Stage("preview_low", oh // d, ow // d, low_latent,
                  tuple(float(x) for x in np.concatenate([low_sigmas, [0.0]])), shift_low,
                  "base", "reshift", k, reshift_noise=noise_k)]


def _refine_stage(request: Request, scheduler: SchedulerSpec, config: SurfConfig, m: int, prev: Stage,
                  req_latent: tuple[int, int, int], trained_refiner: bool, refiner_transformer: bool,
                  warnings: list[str]) -> Stage:
    """The ``m`` refine steps at the request's size, started by the handoff from ``prev``."""
    req_tokens = req_latent[1] * req_latent[2]
    shift_ref = _stage_shift(scheduler, config, req_latent[1:], req_tokens, 2, "refine", warnings)
    if trained_refiner:
        sig = np.linspace(1.0, 0.0, m + 1)  # the straight z_lr -> z_hr path (docs/design.md 1.3)
        model, use_sched, shift_ref = "trained_refiner", False, 1.0
    else:
        start = config.refine_start
        if refiner_transformer and config.transformer_refine_start is not None:
            start = config.transformer_refine_start
        t_star = unshift_sigma(start, shift_ref)
        sig = np.concatenate([shift_sigmas(np.linspace(t_star, 0.0, m + 1)[:-1], shift_ref), [0.0]])
        model, use_sched = ("refiner_transformer" if refiner_transformer else "base"), True
    return Stage("refine", request.height, request.width, req_latent, tuple(float(x) for x in sig),
                 shift_ref, model, "handoff", prev.step_offset + prev.steps, window=config.window,
                 guidance=config.refine_guidance, use_scheduler=use_sched)


def _check_rope(stages: list[Stage], family: FamilySpec) -> None:
    """Raise ``ValueError`` for a stage whose patch grid reaches the family's ``rope_max_seq_len``."""
    if family.rope_max_seq_len is None:
        return
    pt, ph, pw = family.patch_size
    for s in stages:
        axes = (math.ceil(s.latent_size[0] / pt), s.latent_size[1] // ph, s.latent_size[2] // pw)
        if max(axes) >= family.rope_max_seq_len:
            raise ValueError(f"stage {s.name!r} has a patch grid {axes}, but the transformer's "
                             f"rope_max_seq_len is {family.rope_max_seq_len}: every axis must be below it")


# ---------------------------------------------------------------------------- context parallelism
# diffusers' context parallelism (Ulysses or ring) cuts each transformer call's video token sequence
# into equal shards, one per rank, and asserts that they are equal deep inside the first block. The
# planner knows every stage's token count before any model runs, so it moves the sizes it picked
# itself and refuses the ones the caller gave, naming sizes that split.

CpDegree = Union[int, Mapping[str, int]]  # one degree for every stage, or per Stage.model ("base", ...)


def _cp_degree(cp_degree: CpDegree, model: str) -> int:
    return int(cp_degree.get(model, 1)) if isinstance(cp_degree, Mapping) else int(cp_degree)


def _check_cp_degree(cp_degree: CpDegree) -> None:
    values = cp_degree.values() if isinstance(cp_degree, Mapping) else (cp_degree,)
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"cp_degree must be a positive int or a mapping of stage models to them, got {cp_degree!r}")


def _pixel_tokens(height: int, width: int, lt: int, family: FamilySpec) -> int:
    vs = family.vae_scale_spatial
    return _patch_tokens((lt, height // vs, width // vs), family)


def _nearest_splitting(size: tuple[int, int], grid: int, factors: tuple[int, ...], lt: int, family: FamilySpec,
                       degree: int, count: int, limit: Optional[tuple[int, int]] = None) -> list[tuple[int, int]]:
    """Up to ``count`` sizes on the ``grid``-pixel grid nearest ``size`` (grid steps along both axes,
    ties to the nearest area) at which ``size / f`` splits over ``degree`` for every ``f`` in
    ``factors``; none above ``limit``. Along one axis ``degree`` consecutive patch counts hold a
    multiple of ``degree``, so the search stops at that distance."""
    h, w = size
    found: list[tuple[int, int]] = []
    for r in range(1, 2 * degree + 1):
        ring = set()
        for i in range(-r, r + 1):
            for j in {r - abs(i), abs(i) - r}:
                hh, ww = h + i * grid, w + j * grid
                if hh < grid or ww < grid or (limit is not None and (hh > limit[0] or ww > limit[1])):
                    continue
                if all(_pixel_tokens(hh // f, ww // f, lt, family) % degree == 0 for f in factors):
                    ring.add((abs(hh * ww - h * w), hh, ww))
        found += [(hh, ww) for _, hh, ww in sorted(ring)]
        if len(found) >= count:
            break
    return found[:count]


def _snap_preview(request: Request, family: FamilySpec, size: tuple[int, int], switch: bool, d: int, lt: int,
                  degree: int, messages: list[str]) -> tuple[int, int]:
    """The planner's preview size moved (one low-resolution latent patch per grid step, never above the
    request) to the nearest one at which the preview and its low-resolution part split over ``degree``."""
    factors = (1, d) if switch else (1,)
    oh, ow = size
    bad = [f for f in factors if _pixel_tokens(oh // f, ow // f, lt, family) % degree]
    if not bad:
        return size
    near = _nearest_splitting(size, family.pixel_grid * d, factors, lt, family, degree, 1,
                              limit=(request.height, request.width))
    if not near:
        return size  # _check_split refuses it, naming the stage
    nh, nw = near[0]
    f = bad[-1]
    name = "preview_low" if f > 1 else "preview"
    low = f" (preview_low {nh // d}x{nw // d} px, {_pixel_tokens(nh // d, nw // d, lt, family)} tokens)" if switch else ""
    messages.append(f"context parallelism over {degree} ranks: the {name} stage at {oh // f}x{ow // f} px has "
                    f"{_pixel_tokens(oh // f, ow // f, lt, family)} tokens, which do not split into {degree} equal "
                    f"shards; the preview moves to the nearest size that splits, {nh}x{nw} px with "
                    f"{_pixel_tokens(nh, nw, lt, family)} tokens{low}")
    return nh, nw


def _check_split(stages: list[Stage], family: FamilySpec, request: Request, config: SurfConfig,
                 cp_degree: CpDegree) -> None:
    """Raise ``ValueError`` for a stage whose token count its model's context-parallel degree does not
    divide, naming the stage, its tokens, the degree and the nearest sizes (to set) that split."""
    pt, ph, pw = family.patch_size
    for s in stages:
        degree = _cp_degree(cp_degree, s.model)
        tokens = _patch_tokens(s.latent_size, family)
        if degree <= 1 or tokens % degree == 0:
            continue
        lt = s.latent_size[0]
        preview = stages[0]
        d = preview.height // stages[1].height if len(stages) > 1 and stages[1].name == "preview_low" else 1
        if (s.height, s.width) == (request.height, request.width) and s.name != "preview_low":
            at_request = config.optimal_size == "request" and d > 1
            what, size = "height x width", (request.height, request.width)
            grid, factors = (family.pixel_grid * d, (1, d)) if at_request else (family.pixel_grid, (1,))
        else:
            what, size = "optimal_size", (preview.height, preview.width)
            grid, factors = family.pixel_grid * d, ((1, d) if d > 1 else (1,))
        near = _nearest_splitting(size, grid, factors, lt, family, degree, 3)
        sizes = ", ".join(f"{h}x{w}" for h, w in near) or "none near"
        axes = (math.ceil(lt / pt), s.latent_size[1] // ph, s.latent_size[2] // pw)
        raise ValueError(
            f"the {s.name} stage at {s.height}x{s.width} px has {tokens} tokens ({axes[0]} x {axes[1]} x {axes[2]} "
            f"patches), which context parallelism of degree {degree} cannot split into equal shards (diffusers "
            f"asserts it in the transformer's first block); nearest {what} that split: {sizes} (or "
            "ContextParallelConfig(ulysses_anything=True), which shards unevenly)")


def plan_stages(request: Request, family: FamilySpec, scheduler: SchedulerSpec, config: SurfConfig,
                *, trained_refiner: bool = False, refiner_transformer: bool = False,
                trained_refiner_steps: Optional[int] = None, cp_degree: CpDegree = 1) -> Plan:
    """Plan one call. Raises ``ValueError`` naming the problem for anything that cannot be run.

    ``trained_refiner_steps``: the trained ``Refiner``'s ``num_steps`` (used when the config's
    ``refine_steps`` is ``None``). ``cp_degree``: the context-parallel degree (ranks the token
    sequence is split over) of the models that run the stages, one for all or per ``Stage.model``;
    every stage's token count must divide by its model's (docs/context_parallel.md).
    """
    messages: list[str] = []
    warnings: list[str] = []
    _check_request(request, family.pixel_grid)
    _check_cp_degree(cp_degree)
    n, k, m = config.step_counts(request.num_inference_steps, trained_refiner_steps if trained_refiner else None)
    switch = k < n and config.downsample > 1
    if k < n and config.downsample == 1:
        messages.append(f"downsample=1: no low-resolution part, all {n} preview steps at the optimal size")
    oh, ow, switch, d, chosen = _preview_size(request, family, config, switch, config.downsample if switch else 1,
                                              messages, warnings)
    lt = latent_frames(request.num_frames, family)
    if chosen and _cp_degree(cp_degree, "base") > 1:
        oh, ow = _snap_preview(request, family, (oh, ow), switch, d, lt, _cp_degree(cp_degree, "base"), messages)
    vs = family.vae_scale_spatial
    req_latent = (lt, request.height // vs, request.width // vs)
    stages = _preview_stages(scheduler, config, n, k, switch, d, (oh, ow), (lt, oh // vs, ow // vs),
                             req_latent[1] * req_latent[2], warnings)
    if m > 0:
        stages.append(_refine_stage(request, scheduler, config, m, stages[-1], req_latent, trained_refiner,
                                    refiner_transformer, warnings))
    elif (stages[-1].height, stages[-1].width) != (request.height, request.width):
        warnings.append(f"refine_steps=0: the output is the preview at {stages[-1].height}x{stages[-1].width}, "
                        f"not the requested {request.height}x{request.width}")
    _check_rope(stages, family)
    _check_split(stages, family, request, config, cp_degree)
    return Plan(tuple(stages), request, family, scheduler, config, tuple(messages), tuple(warnings))
