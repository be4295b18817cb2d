"""What a model family's adapter provides to the SURF stage runner, and the scheduler handling
shared by every flow-matching family.

An adapter hides what differs between families (docs/design.md 4): the transformer's call signature, VAE
scale factors and latent normalisation, latent preparation at a given resolution, image
conditioning rebuilt per stage, RoPE limits. The runner (``surf_accel.runner``) only talks to this
interface, so HunyuanVideo adds one adapter and no runner changes.

Schedulers. SURF supports the two flow-matching schedulers Wan ships with:
``FlowMatchEulerDiscreteScheduler`` and ``UniPCMultistepScheduler(use_flow_sigmas=True,
prediction_type="flow_prediction")``, both with a static shift. Each stage gets a *fresh* scheduler
of the pipeline's class, configured with shift 1 and handed the stage's already shifted sigmas, so
a multistep history never crosses a resolution switch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import numpy as np
import torch

from surf_accel.planner import FamilySpec, SchedulerSpec

logger = logging.getLogger("surf_accel")

# The diffusers range the adapters are written against (they call the pipelines' public methods
# encode_prompt / encode_image / prepare_latents / check_inputs with their 0.35+ signatures).
MIN_DIFFUSERS = (0, 35)
TESTED_DIFFUSERS = "0.42"


def check_diffusers_version() -> None:
    import diffusers

    parts = []
    for p in diffusers.__version__.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < MIN_DIFFUSERS:
        raise RuntimeError(f"surf_accel needs diffusers >= {'.'.join(map(str, MIN_DIFFUSERS))} "
                           f"(found {diffusers.__version__})")
    if tuple(parts) >= (1, 0):
        logger.warning("surf_accel was tested with diffusers %s; found %s", TESTED_DIFFUSERS, diffusers.__version__)


SUPPORTED_SCHEDULERS = (
    "FlowMatchEulerDiscreteScheduler (static shift, no karras/exponential/beta sigmas, no stochastic sampling)",
    "UniPCMultistepScheduler (use_flow_sigmas=True, prediction_type='flow_prediction', static flow_shift)",
)


def _unsupported_scheduler(scheduler, why: str) -> TypeError:
    return TypeError(f"surf_accel cannot drive {type(scheduler).__name__} ({why}); supported schedulers: "
                     + "; ".join(SUPPORTED_SCHEDULERS))


def scheduler_spec(scheduler) -> SchedulerSpec:
    """The planner's view of a pipeline scheduler; ``TypeError`` for one SURF cannot drive."""
    name = type(scheduler).__name__
    cfg = scheduler.config
    common_flags = ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                    "shift_terminal")
    for flag in common_flags:
        if cfg.get(flag):
            raise _unsupported_scheduler(scheduler, f"{flag} is set")
    if name == "FlowMatchEulerDiscreteScheduler":
        for flag in ("stochastic_sampling", "invert_sigmas"):
            if cfg.get(flag):
                raise _unsupported_scheduler(scheduler, f"{flag} is set")
        # diffusers builds the Euler grid between the (once-shifted) sigmas of its training table.
        return SchedulerSpec("euler", float(cfg.shift), int(cfg.num_train_timesteps),
                             float(scheduler.sigma_max), float(scheduler.sigma_min))
    if name == "UniPCMultistepScheduler":
        if not cfg.get("use_flow_sigmas") or cfg.get("prediction_type") != "flow_prediction":
            raise _unsupported_scheduler(scheduler, "it is not configured for flow matching")
        if cfg.get("final_sigmas_type", "zero") != "zero":
            raise _unsupported_scheduler(scheduler, "final_sigmas_type is not 'zero'")
        return SchedulerSpec("unipc", float(cfg.flow_shift), int(cfg.num_train_timesteps))
    raise _unsupported_scheduler(scheduler, "not a supported class")


def uniform_grid_scheduler_spec(pipe) -> SchedulerSpec:
    """The planner's view of the scheduler of a pipeline that hands it explicit unshifted sigmas
    ``linspace(1, 0, n + 1)[:-1]`` (HunyuanVideo, HunyuanVideo-1.5): Euler with a static shift only
    (UniPC would run the explicit sigmas unshifted, other schedulers reject them)."""
    sched = pipe.scheduler
    name = type(sched).__name__
    if name != "FlowMatchEulerDiscreteScheduler":
        raise TypeError(f"surf_accel drives {type(pipe).__name__} with FlowMatchEulerDiscreteScheduler only "
                        f"(the pipeline's own scheduler); got {name}; supported schedulers: {SUPPORTED_SCHEDULERS[0]}")
    return dataclasses.replace(scheduler_spec(sched), grid="uniform")


def stage_scheduler(scheduler, sigmas, device):
    """A fresh scheduler of ``scheduler``'s class for one stage, set to the given (shifted) sigmas.

    ``sigmas`` are the noise levels of the model evaluations; the scheduler appends its final 0.
    """
    cls = type(scheduler)
    if cls.__name__ == "FlowMatchEulerDiscreteScheduler":
        fresh = cls.from_config(scheduler.config, shift=1.0)
    else:
        fresh = cls.from_config(scheduler.config, flow_shift=1.0)
    fresh.set_timesteps(sigmas=np.asarray(sigmas, dtype=np.float64), device=device)
    fresh.set_begin_index(0)
    return fresh


def diffusers_class(pipe, names) -> Optional[type]:
    """The diffusers class among ``type(pipe)``'s bases whose name is in ``names`` (``None``: none).

    Matching on diffusers' own classes (not on names alone) lets subclasses and patched pipelines
    through while a look-alike class from elsewhere is not mistaken for a supported pipeline.
    """
    for c in type(pipe).__mro__:
        if c.__name__ in names and c.__module__.startswith("diffusers"):
            return c
    return None


def noise_latents(call: "PreparedCall", shape: tuple[int, ...], stage, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """The first stage's start latent ``(B, C, T, H, W)`` float32: the caller's ``latents`` (checked
    against ``shape``) or noise drawn exactly as diffusers' ``prepare_latents`` draws it, in ``dtype``
    (the pipeline's latent dtype: a caller's latents are rounded to it as the pipeline does)."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = tuple(shape)
    if call.latents is not None:
        if tuple(call.latents.shape) != shape:
            raise ValueError(f"`latents` has shape {tuple(call.latents.shape)}, but the first SURF stage "
                             f"({stage.height}x{stage.width} px) needs {shape}")
        return call.latents.to(device=call.device, dtype=dtype).to(torch.float32)
    gen = call.generator
    if isinstance(gen, list) and len(gen) != call.batch:
        raise ValueError(f"You have passed a list of generators of length {len(gen)}, but requested an "
                         f"effective batch size of {call.batch}. Make sure the batch size matches the length "
                         "of the generators.")
    return randn_tensor(shape, generator=gen, device=call.device, dtype=dtype).to(torch.float32)


@dataclass
class PreparedCall:
    """One call's inputs after validation and encoding (the family-independent part)."""

    request: Any  # surf_accel.planner.Request
    batch: int  # effective batch (prompts x videos per prompt)
    guidance_scale: float
    do_cfg: bool
    prompt_embeds: torch.Tensor
    negative_prompt_embeds: Optional[torch.Tensor]
    generator: Any
    latents: Optional[torch.Tensor]
    output_type: str
    return_dict: bool
    attention_kwargs: Optional[dict]
    callback: Any
    callback_inputs: list
    device: torch.device
    extra: dict = field(default_factory=dict)  # family-specific (image, image_embeds, ...)


class ScaledLatentsVAE:
    """VAE latents normalised by ``vae.config.scaling_factor`` alone (HunyuanVideo, HunyuanVideo-1.5);
    a mixin for ``FamilyAdapter``."""

    def decode(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents ``(B, C, T, H, W)`` -> video ``(B, 3, F, H_px, W_px)`` in [-1, 1]."""
        # cast, then unscale: the pipelines' order, so decoding matches them bit for bit
        latents = self.to_vae(pipe, latents)
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]

    def encode(self, pipe, video: torch.Tensor) -> torch.Tensor:
        """Video ``(B, 3, F, H_px, W_px)`` in [-1, 1] -> scaled latents (the posterior's mode), float32."""
        z = pipe.vae.encode(self.to_vae(pipe, video)).latent_dist.mode().to(torch.float32)
        return z * pipe.vae.config.scaling_factor


class FamilyAdapter:
    """Interface of a model-family adapter (see ``integrations.wan.WanAdapter``)."""

    family: str = "?"
    supported_pipelines: tuple[str, ...] = ()
    # diffusers pipelines of this family that are refused with a reason (name -> why)
    refused_pipelines: ClassVar[dict[str, str]] = {}
    default_preset: str = "paper"  # what ``surf_accel.patch(pipe)`` uses when given no config
    fps: int = 16  # the frame rate the family's videos are made for (the CLI's mp4 default)

    def handles(self, pipe) -> bool:
        """Whether ``pipe`` belongs to this family (supported or refused with a reason)."""
        return diffusers_class(pipe, self.supported_pipelines + tuple(self.refused_pipelines)) is not None

    def check_pipeline(self, pipe) -> None:
        """Raise ``TypeError`` naming what is supported when ``pipe`` cannot be driven."""
        raise NotImplementedError

    def video_fps(self, pipe) -> int:
        """The frame rate ``pipe``'s videos are made for (default: the family's ``fps``)."""
        return self.fps

    def check_refiner(self, pipe, refiner) -> None:
        """Raise for a ``refiner`` (``patch(..., refiner=)``) this family cannot use; ``None`` is fine."""
        if refiner is not None:
            raise TypeError(f"the {self.family} adapter takes no refiner; got {type(refiner).__name__}")

    def scheduler_spec(self, pipe) -> SchedulerSpec:
        """The planner's view of the pipeline's scheduler (``TypeError`` for one SURF cannot drive)."""
        return scheduler_spec(pipe.scheduler)

    def family_spec(self, pipe) -> FamilySpec:
        raise NotImplementedError

    def cost_spec(self, transformer, text_len: int):
        """The cost model's view (``surf_accel.cost_model``) of a transformer of this family, reading
        ``text_len`` text tokens."""
        raise NotImplementedError

    def prepare_call(self, pipe, original_call, args, kwargs) -> PreparedCall:
        """Validate and encode one call (prompts once, images once)."""
        raise NotImplementedError

    def initial_latents(self, pipe, call: PreparedCall, stage) -> torch.Tensor:
        raise NotImplementedError

    def stage_context(self, pipe, call: PreparedCall, stage) -> Any:
        """Per-stage conditioning rebuilt at the stage's resolution (e.g. I2V image latents)."""
        return None

    def predict(self, pipe, model, latents, timestep, call: PreparedCall, ctx, *, negative: bool, step_index: int,
                sigma: float) -> torch.Tensor:
        """One transformer evaluation (cond or uncond branch) -> velocity, float32."""
        raise NotImplementedError

    def stage_models(self, pipe, call: PreparedCall, stage, model, config) -> tuple:
        """Every model ``stage`` can run (its caches are reset at the stage's start and end, its window
        attention applied); ``model`` is the runner's model for the stage, ``config`` the call's
        ``SurfConfig``. Default: ``(model,)``."""
        return (model,)

    def step_model(self, pipe, call: PreparedCall, stage, model, timestep, guidance: float,
                   config) -> tuple[Any, float]:
        """The model and guidance scale of one step of ``stage`` at ``timestep`` (the value the
        transformer gets); ``model`` and ``guidance`` are the stage's. Default: those, unchanged."""
        return model, guidance

    def guided_predictions(self, pipe, model, latents, timestep, call: PreparedCall, ctx, *, guidance: float,
                           do_cfg: bool, step_index: int, num_steps: int, sigma: float):
        """One step's model outputs ``(v_cond, v_uncond or None, g)``, which the runner combines as
        ``v_uncond + g (v_cond - v_uncond)`` (``v_cond`` alone when ``v_uncond`` is ``None``).

        Default: the cond branch, and the uncond branch where ``do_cfg`` (the stage guides: its
        guidance > 1; a step's own ``guidance``, e.g. Wan2.2's ``guidance_scale_2``, may be lower), with
        ``g = guidance``.
        A family whose pipeline combines the branches itself (a diffusers guider) returns its
        combined prediction as ``(v, None, 1.0)``. ``step_index`` / ``num_steps``: the step's global
        index in the call and the call's total steps over all stages.
        """
        v_c = self.predict(pipe, model, latents, timestep, call, ctx, negative=False, step_index=step_index,
                           sigma=sigma)
        v_u = None
        if do_cfg:
            v_u = self.predict(pipe, model, latents, timestep, call, ctx, negative=True, step_index=step_index,
                               sigma=sigma)
        return v_c, v_u, guidance

    def decode(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video in [-1, 1], ``(B, 3, F, H, W)``."""
        raise NotImplementedError

    def encode(self, pipe, video: torch.Tensor) -> torch.Tensor:
        """Video in [-1, 1] -> normalised latents (the distribution's mode)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared by the families
    @staticmethod
    def bind_call(pipe, original_call, args, kwargs) -> dict:
        """The call's arguments by name, defaults filled in, as the pipeline's ``__call__`` binds them."""
        try:
            bound = inspect.signature(original_call).bind(pipe, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{type(pipe).__name__}.__call__: {e}") from None
        bound.apply_defaults()
        a = dict(bound.arguments)
        a.pop("self", None)
        return a

    @staticmethod
    def callback_and_inputs(a: dict) -> tuple[Any, list]:
        """``callback_on_step_end`` and the tensor inputs it asks for (a ``PipelineCallback`` names its own)."""
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback

        cb = a["callback_on_step_end"]
        cb_inputs = a["callback_on_step_end_tensor_inputs"]
        if isinstance(cb, (PipelineCallback, MultiPipelineCallbacks)):
            cb_inputs = cb.tensor_inputs
        return cb, list(cb_inputs)

    @staticmethod
    def videos_per_prompt(a: dict) -> int:
        nvp = 1 if a["num_videos_per_prompt"] is None else a["num_videos_per_prompt"]
        if not isinstance(nvp, int) or nvp < 1:
            raise ValueError(f"num_videos_per_prompt must be an int >= 1, got {nvp!r}")
        return nvp

    @staticmethod
    def prompt_count(prompt, prompt_embeds) -> int:
        if prompt is not None:
            return 1 if isinstance(prompt, str) else len(prompt)
        return prompt_embeds.shape[0]

    @staticmethod
    def start_call(pipe, guidance_scale, attention_kwargs) -> None:
        """The pipeline state its properties and callbacks read, as its own ``__call__`` sets it."""
        pipe._guidance_scale = guidance_scale
        pipe._attention_kwargs = attention_kwargs
        pipe._current_timestep = None
        pipe._interrupt = False

    @staticmethod
    def to_vae(pipe, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the VAE's execution device (its offload hook's device) in the VAE's dtype."""
        from diffusers.utils.torch_utils import get_module_execution_device

        return x.to(get_module_execution_device(pipe.vae), dtype=pipe.vae.dtype)

    branch_names: ClassVar[tuple[str, str]] = ("cond", "uncond")  # cache_context names, as the family's pipeline

    @staticmethod
    def cache_context(model, name: str):
        """The model's diffusers cache context ``name`` with the SURF stage's step index, step count and
        sigma (``integrations.accelerators.stages``), where it has one (a no-op context otherwise)."""
        if hasattr(model, "cache_context"):
            from surf_accel.integrations.accelerators.stages import cache_context_kwargs

            return model.cache_context(name, **cache_context_kwargs(model))
        return contextlib.nullcontext()

    def branch(self, model, negative: bool):
        """The diffusers cache context of one CFG branch (``branch_names``)."""
        return self.cache_context(model, self.branch_names[negative])

    def finalize(self, pipe, latents: torch.Tensor, call: PreparedCall, ctx) -> torch.Tensor:
        """Last touch on the output latents before decoding (identity for most families)."""
        return latents

    def output(self, frames):
        """The pipeline's own output dataclass around ``frames``."""
        raise NotImplementedError

    def postprocess(self, pipe, latents: torch.Tensor, call: PreparedCall):
        """Decode (unless ``output_type == 'latent'``) and wrap the result like the pipeline does."""
        if call.output_type == "latent":
            video = latents
        else:
            video = self.decode(pipe, latents)
            video = pipe.video_processor.postprocess_video(video, output_type=call.output_type)
        pipe.maybe_free_model_hooks()
        if not call.return_dict:
            return (video,)
        return self.output(video)
