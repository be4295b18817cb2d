"""``surf_accel.patch`` / ``unpatch`` / ``patched``: SURF on one pipeline instance.

Patching swaps the instance's class for a per-instance-family subclass whose only change is
``__call__`` (Python looks ``__call__`` up on the type, so an instance attribute cannot do it).
The subclass keeps the original class's name and module, so ``isinstance``, ``save_pretrained``
and everything else still see the original class (``WanPipeline``, ``HunyuanVideoPipeline``); no
diffusers class, module or global is modified. The patch's state lives on the instance (``pipe._surf_state``). Offload hooks
(``enable_model_cpu_offload``) sit on the components, not on the pipeline class, so the patch
survives them in either order. ``unpatch`` restores the original class: the unpatched call is the
untouched diffusers code, so its outputs are bit-identical to a never-patched pipeline. A patched
pipeline pickles (and deep-copies) as its unpatched self plus its ``SurfConfig`` and refiner, and
is patched again when loaded.

A SURF call holds its pipeline, the pipeline's models and the refiner for the whole call
(``runner.hold``): it installs per-stage state on them (window attention, cache resets), so another
SURF call on any of them, from another thread or through another pipeline sharing a transformer,
waits until the first one is done instead of running on its state.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from surf_accel import context_parallel, folder_setting, registry
from surf_accel.config import SurfConfig
from surf_accel.cost_model import estimate_plan, vae_spec
from surf_accel.planner import Request, plan_stages
from surf_accel.refiner import Refiner
from surf_accel.runner import STAGE_ATTR, hold, run_plan

logger = logging.getLogger("surf_accel")

_STATE_ATTR = "_surf_state"
_LAST_PLAN = "_surf_last_plan"
_SUBCLASSES: dict[type, type] = {}  # original class -> its SURF subclass (ours only)


@dataclass(frozen=True)
class _SurfState:
    config: SurfConfig
    refiner: Any
    adapter: Any
    original_class: type


def supported_pipelines() -> tuple[str, ...]:
    """Names of the diffusers pipeline classes ``patch`` accepts (every registered family's)."""
    return tuple(name for fam in registry.families() for name in fam.adapter.supported_pipelines)


def _adapter_for(pipe):
    """The family adapter for ``pipe``, picked by its diffusers pipeline class; ``TypeError`` naming
    what is supported for anything else (or for a family variant the adapter refuses)."""
    return registry.find_family(pipe).adapter


def _surf_subclass(cls: type) -> type:
    sub = _SUBCLASSES.get(cls)
    if sub is None:
        @functools.wraps(cls.__call__)
        def __call__(self, *args, **kwargs):
            return _surf_call(self, *args, **kwargs)

        # the original's signature, so that tools introspecting the call see the pipeline's arguments
        __call__.__signature__ = inspect.signature(cls.__call__)
        __call__.__doc__ = (f"SURF-accelerated {cls.__name__}.__call__ (same arguments); "
                            "see surf_accel.patch. Original docs:\n" + (cls.__call__.__doc__ or ""))
        sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                           "__qualname__": cls.__qualname__, "_surf_original_class": cls,
                                           "__reduce_ex__": _reduce_patched})
        _SUBCLASSES[cls] = sub
    return sub


def _reduce_patched(pipe, protocol):
    """Pickle a patched pipeline as its unpatched self and how it was patched (the SURF subclass is made
    at run time: pickle cannot find it by name)."""
    state: _SurfState = pipe.__dict__[_STATE_ATTR]
    attrs = {k: v for k, v in pipe.__dict__.items() if k not in (_STATE_ATTR, _LAST_PLAN, STAGE_ATTR)}
    return _unpickle_patched, (state.original_class, attrs, state.config, state.refiner)


def _unpickle_patched(cls: type, attrs: dict, config: SurfConfig, refiner):
    pipe = cls.__new__(cls)
    pipe.__dict__.update(attrs)
    return patch(pipe, config, refiner=refiner)


def is_patched(pipe) -> bool:
    return getattr(pipe, "__dict__", {}).get(_STATE_ATTR) is not None


def get_config(pipe) -> Optional[SurfConfig]:
    """The SurfConfig a pipeline is patched with, or ``None``."""
    state = getattr(pipe, "__dict__", {}).get(_STATE_ATTR)
    return state.config if state is not None else None


def patch(pipe, config: Optional[SurfConfig] = None, *, refiner=None):
    """Make ``pipe(...)`` run SURF with the pipeline's own arguments; returns ``pipe``.

    ``config``: a ``SurfConfig``, a preset name, or ``None``: the setting of the model folder the
    pipeline was loaded from (its ``surf_config.json``, ``surf_accel.folder_setting``: config and
    refiner), else the family's default preset (``"paper"`` for Wan2.1 and Wan2.2,
    ``"hunyuan-paper"`` for HunyuanVideo).
    ``refiner``: ``None`` (training-free refine with the pipeline's transformer), a transformer of
    the same family (training-free refine with it), or a trained ``surf_accel.Refiner`` (Wan).
    Repeating with the same config and refiner is a no-op; a different one raises ``ValueError``
    until ``unpatch``. An unsupported pipeline or scheduler raises ``TypeError`` naming what is
    supported.

    Callbacks (``callback_on_step_end``) run after every step of every stage, with the step's index
    over the whole call; ``callback_kwargs["latents"]`` are the stage's own latents, of the stage's size
    (the preview's are smaller than the request's), and ``pipe.surf_stage`` is the stage of the step (a
    ``planner.Stage``: ``name``, ``height``, ``width``, ``latent_size``, ``steps``, ``step_offset``;
    ``None`` outside a stage). The last step of a stage that ends in a reshift has the next stage's
    start as its update, so its latents are already of the next stage's size. Latents a callback
    returns must have the shape of the latents it was given (``ValueError`` naming the stage otherwise).
    """
    adapter = _adapter_for(pipe)
    state = getattr(pipe, "__dict__", {}).get(_STATE_ATTR)
    setting = None
    if config is None:
        folder = folder_setting.model_folder(pipe)
        setting = folder_setting.read(folder) if folder is not None else None
        config = setting.config if setting is not None else SurfConfig.preset(adapter.default_preset)
    elif isinstance(config, str):
        config = SurfConfig.preset(config)
    elif not isinstance(config, SurfConfig):
        raise TypeError(f"config must be a SurfConfig, a preset name or None, got {type(config).__name__}")
    if state is not None:
        same_refiner = state.refiner is refiner or (setting is not None and refiner is None)
        if state.config == config and same_refiner:
            return pipe
        raise ValueError("this pipeline is already patched with a different SurfConfig or refiner "
                         f"({state.config} vs {config}); call surf_accel.unpatch(pipe) first")
    if setting is not None and setting.refiner is not None and refiner is None:
        refiner = folder_setting.load_refiner(setting.refiner, dtype=pipe.transformer.dtype,
                                              device=pipe.transformer.device)
    adapter.check_refiner(pipe, refiner)
    if isinstance(refiner, Refiner):
        for msg in refiner.setting_mismatches(config):
            logger.warning(msg)
    vae_spec(pipe.vae)  # measured once per VAE architecture here, so that no call pays for it
    cls = type(pipe)
    pipe.__dict__[_STATE_ATTR] = _SurfState(config, refiner, adapter, cls)
    pipe.__dict__[STAGE_ATTR] = None
    pipe.__class__ = _surf_subclass(cls)
    return pipe


def unpatch(pipe):
    """Undo ``patch``; the pipeline then behaves exactly as if never patched. Returns ``pipe``.

    A no-op on a pipeline that is not patched.
    """
    attrs = getattr(pipe, "__dict__", {})
    state = attrs.pop(_STATE_ATTR, None)
    attrs.pop(_LAST_PLAN, None)
    attrs.pop(STAGE_ATTR, None)
    if state is not None:
        pipe.__class__ = state.original_class
    return pipe


@contextlib.contextmanager
def patched(pipe, config: Optional[SurfConfig] = None, *, refiner=None):
    """``with surf_accel.patched(pipe, cfg): pipe(...)``; unpatches on exit if it patched."""
    was = is_patched(pipe)
    patch(pipe, config, refiner=refiner)
    try:
        yield pipe
    finally:
        if not was:
            unpatch(pipe)


def plan_for(pipe, *, height: int, width: int, num_frames: int, num_inference_steps: int,
             config: Optional[SurfConfig] = None, refiner=None):
    """The stage plan a call would run (no model evaluation)."""
    state = getattr(pipe, "__dict__", {}).get(_STATE_ATTR)
    adapter = state.adapter if state is not None else _adapter_for(pipe)
    cfg = config or (state.config if state is not None else SurfConfig.preset(adapter.default_preset))
    ref = refiner if refiner is not None else (state.refiner if state is not None else None)
    return _plan(Request(height, width, num_frames, num_inference_steps), adapter, pipe, cfg, ref)


def _plan(request, adapter, pipe, config: SurfConfig, refiner):
    trained = isinstance(refiner, Refiner)
    return plan_stages(request, adapter.family_spec(pipe), adapter.scheduler_spec(pipe), config,
                       trained_refiner=trained, refiner_transformer=refiner is not None and not trained,
                       trained_refiner_steps=refiner.num_steps if trained else None,
                       cp_degree=context_parallel.stage_degrees(pipe, refiner))


def _cost_warnings(adapter, pipe, plan, call, refiner) -> tuple[str, ...]:
    """The cost model's word on this call's plan with the pipeline's own transformer shapes: one
    warning if SURF counts more FLOPs than the unpatched call would."""
    text_len = int(call.prompt_embeds.shape[1])
    ref = refiner.transformer if isinstance(refiner, Refiner) else refiner
    est = estimate_plan(plan, adapter.cost_spec(pipe.transformer, text_len), passes=2 if call.do_cfg else 1,
                        vae=vae_spec(pipe.vae),
                        refiner=None if ref is None else adapter.cost_spec(ref, text_len),
                        decode_output=call.output_type != "latent")
    return (est.cost_warning,) if est.cost_warning else ()


def _lora_warnings(pipe, plan) -> tuple[str, ...]:
    """One warning when LoRA adapters on the pipeline's transformer shape the preview but not the
    refine, which another model runs (a trained refiner or another transformer)."""
    adapters = sorted(getattr(pipe.transformer, "peft_config", None) or {})
    refine = [s.model for s in plan.stages if s.model != "base"]
    if not adapters or not refine:
        return ()
    what = "trained refiner" if refine[0] == "trained_refiner" else "refiner transformer"
    return (f"the LoRA adapters {adapters} on pipe.transformer shape the preview but not the refine by the "
            f"{what}; load them on the refiner too, or refine with the base model (refiner=None)",)


def _held_by_call(pipe, refiner) -> list:
    """What a SURF call holds: the pipeline, its models and the refiner's model."""
    models = [m for m in getattr(pipe, "components", {}).values() if isinstance(m, torch.nn.Module)]
    return [pipe, *models, refiner.transformer if isinstance(refiner, Refiner) else refiner]


@torch.no_grad()
def _surf_call(pipe, *args, **kwargs):
    state: _SurfState = pipe.__dict__[_STATE_ATTR]
    adapter = state.adapter
    ref = state.refiner
    with hold(_held_by_call(pipe, ref)):
        if any(d > 1 for d in context_parallel.stage_degrees(pipe, ref).values()):
            # a stage that cannot split is refused here, before the text encoder runs
            early = adapter.call_request(pipe, adapter.bind_call(pipe, state.original_class.__call__, args, kwargs))
            if early is not None:
                _plan(early, adapter, pipe, state.config, ref)
        call = adapter.prepare_call(pipe, state.original_class.__call__, args, kwargs)
        plan = _plan(call.request, adapter, pipe, state.config, ref)
        for m in plan.messages:
            logger.info("surf_accel: %s", m)
        for w in plan.warnings + _cost_warnings(adapter, pipe, plan, call, ref) + _lora_warnings(pipe, plan):
            logger.warning("surf_accel: %s", w)
        pipe.__dict__[_LAST_PLAN] = plan
        return run_plan(pipe, adapter, plan, call, refiner=ref)
