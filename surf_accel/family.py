"""What a model family provides to SURF: the adapter protocol (``FamilyAdapter``), the prepared call,
and the declaration (``Family``) by which a family registers everything about itself in one place.

An adapter hides what differs between families (docs/design.md 4): the transformer's call signature, VAE
scale factors and latent normalisation, latent preparation at a given resolution, image
conditioning rebuilt per stage, RoPE limits. The runner (``surf_accel.runner``) only talks to this
interface. A ``Family`` adds the rest: its cost-model specs and defaults, the attention modules that
windows and the sparse preview replace, TeaCache's published coefficients for its checkpoints.
``register_family`` makes a family known to ``patch``, the cost model, windows and the CLI; the built-in
families register when ``surf_accel.integrations`` is imported.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional

import torch

from surf_accel.config import PRESETS, register_preset
from surf_accel.planner import FamilySpec, Request, SchedulerSpec
from surf_accel.schedulers import scheduler_spec
from surf_accel.stages import cache_context_kwargs

logger = logging.getLogger("surf_accel")

# The diffusers range the adapters are written against (they call the pipelines' public methods
# encode_prompt / encode_image / prepare_latents / check_inputs with their 0.35+ signatures).
MIN_DIFFUSERS = (0, 35)
TESTED_DIFFUSERS = "0.42"


def check_diffusers_version() -> None:
    import diffusers  # heavy: this module's diffusers imports wait until a pipeline is driven

    parts = []
    for p in diffusers.__version__.split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < MIN_DIFFUSERS:
        raise RuntimeError(f"surf_accel needs diffusers >= {'.'.join(map(str, MIN_DIFFUSERS))} "
                           f"(found {diffusers.__version__})")
    if tuple(parts) >= (1, 0):
        logger.warning("surf_accel was tested with diffusers %s; found %s", TESTED_DIFFUSERS, diffusers.__version__)


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
    from diffusers.utils.torch_utils import randn_tensor  # heavy (see check_diffusers_version)

    shape = tuple(shape)
    if call.latents is not None:
        # any batch, as the pipelines take the caller's latents (the transformer broadcasts one prompt's text)
        if tuple(call.latents.shape[1:]) != shape[1:]:
            raise ValueError(f"`latents` has shape {tuple(call.latents.shape)}, but the first SURF stage "
                             f"({stage.height}x{stage.width} px) needs {('B',) + shape[1:]}")
        return call.latents.to(device=call.device, dtype=dtype).to(torch.float32)
    gen = call.generator
    if isinstance(gen, list) and len(gen) != call.batch:
        raise ValueError(f"You have passed a list of generators of length {len(gen)}, but requested an "
                         f"effective batch size of {call.batch}. Make sure the batch size matches the length "
                         "of the generators.")
    return randn_tensor(shape, generator=gen, device=call.device, dtype=dtype).to(torch.float32)


def integral(value: Any) -> Any:
    """``value`` as a Python int where it is a whole number of another type (``np.int64(64)``, ``64.0``: the
    pipelines compute with those as with ints); anything else unchanged, for the pipeline's checks."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and float(value).is_integer():
        return int(value)
    return value


@dataclass
class PreparedCall:
    """One call's inputs after validation and encoding (the family-independent part)."""

    request: Request
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


@dataclass
class CallEncoding:
    """A family's encoding of one call (``FamilyAdapter.encode_call``)."""

    request: Request
    guidance_scale: float
    do_cfg: bool
    prompt_embeds: torch.Tensor  # (batch, text tokens, text dim) in the transformer's dtype
    negative_prompt_embeds: Optional[torch.Tensor]
    extra: dict


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
        """Validate and encode one call (prompts once, images once): the arguments bound as the
        pipeline binds them, the family's checks (``check_call``), the call state the pipeline sets
        (``start_call``), then the family's encoding (``encode_call``)."""
        a = self.bind_call(pipe, original_call, args, kwargs)
        for key in ("height", "width", "num_frames", "num_inference_steps"):
            a[key] = integral(a.get(key))
        if a.get("sigmas") is not None:
            raise ValueError("surf_accel plans each stage's sigmas itself (SurfConfig, the scheduler's shift); "
                             "the `sigmas` argument is not supported while the pipeline is patched")
        callback, callback_inputs = self.check_call(pipe, a)
        nvp = self.videos_per_prompt(a)
        self.start_call(pipe, a)
        n_prompts = self.prompt_count(a["prompt"], a["prompt_embeds"])
        device = pipe._execution_device
        enc = self.encode_call(pipe, a, n_prompts, nvp, device)
        return PreparedCall(request=enc.request, batch=n_prompts * nvp, guidance_scale=enc.guidance_scale,
                            do_cfg=enc.do_cfg, prompt_embeds=enc.prompt_embeds,
                            negative_prompt_embeds=enc.negative_prompt_embeds, generator=a["generator"],
                            latents=a["latents"], output_type=a["output_type"], return_dict=a["return_dict"],
                            attention_kwargs=a["attention_kwargs"], callback=callback,
                            callback_inputs=callback_inputs, device=device, extra=enc.extra)

    def check_call(self, pipe, a: dict) -> tuple[Any, list]:
        """Raise for arguments the pipeline (or SURF) refuses; the callback and the tensor inputs it asks
        for. ``a``: the bound arguments."""
        raise NotImplementedError

    def call_request(self, pipe, a: dict) -> Optional[Request]:
        """The request of the bound arguments ``a`` before anything is encoded, for the checks that must
        run before any model (a context-parallel split); ``None`` where the family cannot tell it yet."""
        return None

    def encode_call(self, pipe, a: dict, n_prompts: int, nvp: int, device: torch.device) -> "CallEncoding":
        """The request, guidance and text (one row per video: ``n_prompts * nvp``, each prompt's videos
        together) and the family's other conditioning, encoded once for the whole call."""
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
        from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback  # heavy (see check_diffusers_version)

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

    def start_call(self, pipe, a: dict) -> None:
        """The pipeline state its properties and callbacks read, as its own ``__call__`` sets it."""
        pipe._guidance_scale = a["guidance_scale"]
        pipe._attention_kwargs = a["attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False

    @staticmethod
    def to_vae(pipe, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the VAE's execution device (its offload hook's device) in the VAE's dtype."""
        from diffusers.utils.torch_utils import get_module_execution_device  # heavy (see check_diffusers_version)

        return x.to(get_module_execution_device(pipe.vae), dtype=pipe.vae.dtype)

    branch_names: ClassVar[tuple[str, str]] = ("cond", "uncond")  # cache_context names, as the family's pipeline

    @staticmethod
    def cache_context(model, name: str):
        """The model's diffusers cache context ``name`` with the SURF stage's step index, step count and
        sigma (``surf_accel.stages``), where it has one (a no-op context otherwise)."""
        if hasattr(model, "cache_context"):
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


@dataclass(frozen=True)
class AttentionSpec:
    """Where shifted windows and the sparse preview go in one diffusers transformer class.

    ``targets(transformer)``: the attention modules that get them, in block order;
    ``patch_sizes(transformer)``: its ``(p_t, p_h, p_w)`` patch (the token grid is the input's
    ``(T / p_t, H / p_h, W / p_w)``); ``text_sources(forward_kwargs)``: the forward inputs the count of
    valid text tokens depends on, and ``text_lengths(sources)`` that count per batch item (``None``: no
    text mask); ``processor`` / ``sparse_processor``: the processor classes (constructed with the shared
    state); ``default_processors``: the names of diffusers' own processors of ``targets``, which the sparse
    preview may replace (any other is the user's, and kept)."""

    transformer: str | type  # a diffusers class by name, or a class of the user's own
    targets: Callable[[torch.nn.Module], list]
    patch_sizes: Callable[[torch.nn.Module], tuple[int, int, int]]
    text_sources: Callable[[dict], tuple]
    text_lengths: Callable[[tuple], Optional[tuple[int, ...]]]
    processor: type
    sparse_processor: type
    default_processors: tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """Everything SURF knows about one model family, declared in one place.

    ``adapter``: drives its pipelines (``FamilyAdapter``). ``models``: cost-model specs of its published
    checkpoints by catalogue name (``surf-accel estimate --model``), each with a ``family`` naming a key of
    ``defaults``: what ``estimate`` assumes for that variant (``cost_model.FamilyDefaults``).
    ``presets``: ``SurfConfig`` presets of its own, name -> (config, description). ``attention``: one
    ``AttentionSpec`` per transformer class windows and the sparse preview serve. ``teacache``: TeaCache's
    published coefficients for its checkpoints (name -> ``TeaCacheModel``) and ``teacache_indicators``:
    transformer class -> the indicators TeaCache can read there."""

    name: str
    adapter: "FamilyAdapter"
    models: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, tuple[Any, str]] = field(default_factory=dict)
    attention: tuple[AttentionSpec, ...] = ()
    teacache: dict[str, Any] = field(default_factory=dict)
    teacache_indicators: dict[str, tuple[str, ...]] = field(default_factory=dict)


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` known to ``patch``, the cost model, windows, TeaCache and the CLI; returns it.

    A family registered again under its name replaces the earlier one. ``ValueError`` where one of its
    catalogue names or presets is already another family's."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a surf_accel.Family, got {type(family).__name__}")
    if not isinstance(family.adapter, FamilyAdapter):
        raise TypeError(f"Family.adapter must be a FamilyAdapter instance, got {type(family.adapter).__name__}")
    for other in _FAMILIES.values():
        if other.name == family.name:
            continue
        clash = (set(other.models) & set(family.models)) | (set(other.presets) & set(family.presets))
        if clash:
            raise ValueError(f"family {family.name!r}: {sorted(clash)} already belong to family {other.name!r}")
    for name, (config, description) in family.presets.items():
        if name in PRESETS and name not in getattr(_FAMILIES.get(family.name), "presets", {}):
            raise ValueError(f"family {family.name!r}: preset {name!r} already exists")
        register_preset(name, config, description)
    _FAMILIES[family.name] = family
    return family


def families() -> tuple[Family, ...]:
    """The registered families, in registration order (the built-in ones once ``surf_accel.integrations``
    is imported; ``surf_accel.registry`` imports it)."""
    return tuple(_FAMILIES.values())


def family_named(name: str) -> Family:
    """The registered family ``name``; ``KeyError`` naming the registered ones."""
    if name not in _FAMILIES:
        raise KeyError(f"no family {name!r} is registered; registered: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


def unregister_family(name: str) -> None:
    """Forget the family ``name`` and its presets (a no-op for a name never registered)."""
    family = _FAMILIES.pop(name, None)
    if family is not None:
        for preset in family.presets:
            PRESETS.pop(preset, None)


def find_family(pipe) -> Family:
    """The family whose adapter handles ``pipe`` (checked), the latest registered first, so that a family
    of the user's own can claim a subclass of a built-in pipeline; ``TypeError`` naming what is supported."""
    for fam in reversed(_FAMILIES.values()):
        if fam.adapter.handles(pipe):
            fam.adapter.check_pipeline(pipe)
            return fam
    supported = [name for fam in _FAMILIES.values() for name in fam.adapter.supported_pipelines]
    raise TypeError(f"surf_accel supports {', '.join(supported)}; got {type(pipe).__name__}")


def attention_spec(transformer) -> AttentionSpec:
    """The ``AttentionSpec`` of ``transformer``'s diffusers class; ``TypeError`` naming the supported ones."""
    specs = [a for fam in _FAMILIES.values() for a in fam.attention]
    for spec in specs:
        if isinstance(spec.transformer, type):
            if isinstance(transformer, spec.transformer):
                return spec
        elif diffusers_class(transformer, (spec.transformer,)) is not None:
            return spec
    names = [s.transformer if isinstance(s.transformer, str) else s.transformer.__name__ for s in specs]
    raise TypeError(f"window attention supports {', '.join(names)}; got {type(transformer).__name__}")
