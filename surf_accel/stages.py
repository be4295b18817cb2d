"""The stacking protocol: what SURF's stage loop tells every accelerator installed on a model.

A SURF call runs several *stages* (docs/design.md 2), each at its own resolution with its own
sigma schedule, possibly on another transformer (the refiner). Accelerators that keep state between
transformer calls (caches) were written for one call-long schedule at one resolution; this module
is the one place that maps SURF's stages onto them:

- ``StageInfo``: a stage as an accelerator sees it (index, name, resolution, step count, its place in
  the call, sigmas).
- ``StepInfo``: one step of a stage (index within the stage, sigma, timestep). ``cache_context_kwargs``
  is what diffusers' ``cache_context(name, step_index=..., num_inference_steps=..., sigma=...,
  timestep=...)`` takes, *per stage*: SeaCache, TeaCache and similar read it.
- ``Accelerator``: the interface a stacking adapter implements (``check`` a plan before any compute:
  refuse what cannot be right; ``stage_start`` / ``stage_end`` around each stage).
- ``StageProtocol``: built once per call by the runner for every transformer the plan's stages can
  use; ``stage(models, stage)`` wraps one stage (every stateful diffusers hook on those models is reset
  at its start and end, so no cache state crosses a resolution change), ``step(...)`` publishes the
  current step, which the adapter's CFG ``branch`` context passes on to the cache hooks.
- ``AcceleratorKind``: one accelerator SURF stacks with, as it registers itself
  (``register_accelerator``): its name, its ``--cache`` form, how to install it from that form and how
  to find it installed on a model. ``detect`` asks every registered kind; two caches on one model are
  refused (diffusers allows one; two would each skip blocks the other computes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional, Sequence

import torch

_STEP_ATTR = "_surf_accel_step"  # the current StepInfo on a transformer, only while a stage runs


@dataclass(frozen=True)
class StageInfo:
    """One SURF stage as accelerators see it."""

    index: int  # position in the plan
    name: str  # "preview", "preview_low", "refine"
    height: int  # pixels
    width: int
    latent_size: tuple[int, int, int]  # (frames, height, width) in latent space
    steps: int  # model evaluations per branch in this stage
    step_offset: int  # global index of the stage's first step in the call
    total_steps: int  # steps of the whole call (all stages)
    num_stages: int
    sigmas: tuple[float, ...]  # steps + 1 levels (see planner.Stage)
    request_steps: int  # the call's num_inference_steps

    @classmethod
    def from_plan(cls, plan, index: int) -> "StageInfo":
        s = plan.stages[index]
        return cls(index, s.name, s.height, s.width, tuple(s.latent_size), s.steps, s.step_offset,
                   plan.total_steps, len(plan.stages), tuple(s.sigmas), plan.request.num_inference_steps)


@dataclass(frozen=True)
class StepInfo:
    """One step of a stage."""

    stage: StageInfo
    index: int  # within the stage: 0 .. stage.steps - 1
    sigma: float
    timestep: float

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.stage.steps - 1

    def cache_context_kwargs(self) -> dict:
        """diffusers ``cache_context`` fields for this step, counted within the stage."""
        return dict(step_index=self.index, num_inference_steps=self.stage.steps, sigma=self.sigma,
                    timestep=self.timestep)


def current_step(model) -> Optional[StepInfo]:
    """The step a SURF stage is running on ``model`` (``None`` outside SURF's stage loop)."""
    return getattr(model, _STEP_ATTR, None)


def cache_context_kwargs(model) -> dict:
    """What the adapters' ``branch`` passes to ``cache_context`` besides the branch name."""
    step = current_step(model)
    return {} if step is None else step.cache_context_kwargs()


class Accelerator:
    """A stacking adapter for one accelerator installed on one model."""

    name = "?"

    def check(self, plan, model, *, cfg: bool) -> None:
        """Raise ``ValueError`` naming the setting when this accelerator cannot be right under ``plan``
        (``cfg``: the call makes a second, unconditional pass per step)."""

    def stage_start(self, model, stage: StageInfo) -> None:
        """Called after the model's stateful hooks were reset, before the stage's first step."""

    def stage_end(self, model, stage: StageInfo) -> None:
        """Called after the stage's last step, before the reset."""


@dataclass(frozen=True)
class AcceleratorKind:
    """One accelerator SURF stacks with.

    ``detect(model)``: the ``Accelerator`` objects of this kind installed on ``model`` (``[]``: none;
    ``None`` for a kind another kind finds, such as each diffusers cache).
    ``cache_form``: its ``--cache`` form (``"teacache:THRESHOLD"``; ``None``: not installable by name);
    ``install(pipe, value, options)``: installs it on ``pipe.transformer`` from the form's value (``""``
    when none was given) and returns what was installed (``ValueError`` for a bad value); ``options``
    carries per-call extras such as ``teacache_fit``. ``refusal``: why the form is refused under SURF.
    ``remove(model)``: takes it off ``model`` (a no-op where it is not installed).
    """

    name: str
    detect: Optional[Callable[[torch.nn.Module], list[Accelerator]]] = None
    cache_form: Optional[str] = None
    install: Optional[Callable[..., str]] = None
    refusal: Optional[str] = None
    remove: Optional[Callable[[torch.nn.Module], None]] = None


_KINDS: dict[str, AcceleratorKind] = {}


def register_accelerator(kind: AcceleratorKind) -> None:
    """Make ``kind`` known to ``detect``, ``--cache`` and ``info``; registering a name again replaces it."""
    if not isinstance(kind, AcceleratorKind):
        raise TypeError(f"register_accelerator takes an AcceleratorKind, got {type(kind).__name__}")
    _KINDS[kind.name] = kind


def accelerator_kinds() -> tuple[AcceleratorKind, ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS.values())


def cache_forms() -> str:
    """The accepted ``--cache`` forms, as error messages and ``--help`` list them."""
    forms = [k.cache_form for k in _KINDS.values() if k.cache_form and k.refusal is None]
    refused = [k.name for k in _KINDS.values() if k.cache_form and k.refusal is not None]
    return ", ".join(forms) + (f" ({', '.join(refused)} {'is' if len(refused) == 1 else 'are'} refused)" if refused else "")


def cache_threshold(name: str, value: str) -> float:
    """The number in a ``--cache NAME:VALUE`` form; ``ValueError`` naming the forms otherwise."""
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--cache {name}:{value}: the threshold must be a number (forms: {cache_forms()})") from None


def install_cache(pipe, spec: str, **options) -> str:
    """Install the cache the ``--cache`` form ``spec`` names on ``pipe.transformer``; returns what was
    installed. ``ValueError`` naming the accepted forms for anything else; ``options`` go to the kind's
    ``install`` (``teacache_fit=(indicator, coefficients)`` for TeaCache on a model it published none for)."""
    name, _, value = spec.partition(":")
    name, value = name.strip().lower(), value.strip()
    kind = _KINDS.get(name)
    if kind is None or kind.cache_form is None or (not value and not kind.cache_form.endswith("]")
                                                   and kind.refusal is None):
        raise ValueError(f"--cache {spec!r}: unknown form; use one of {cache_forms()}")
    if kind.refusal is not None:
        raise ValueError(f"--cache {name}: {kind.refusal}")
    return kind.install(pipe, value, **options)


def remove_caches(model) -> None:
    """Take every registered kind's accelerator off ``model`` (a no-op for what is not installed)."""
    for kind in _KINDS.values():
        if kind.remove is not None:
            kind.remove(model)


def detect(model) -> list[Accelerator]:
    """Every accelerator installed on ``model``; ``ValueError`` for two caches on one model."""
    found = [acc for kind in _KINDS.values() if kind.detect is not None for acc in kind.detect(model)]
    caches = [a.name for a in found if getattr(a, "is_cache", True)]
    if len(caches) > 1:
        raise ValueError(f"{type(model).__name__} has more than one cache installed ({', '.join(caches)}); diffusers "
                         "allows one cache per model and two would each skip work the other relies on. Keep one: "
                         "`transformer.disable_cache()` removes a diffusers cache, "
                         "`surf_accel.integrations.accelerators.remove_teacache(transformer)` TeaCache, "
                         "`cache_dit.disable_cache(pipe.transformer)` (or `(pipe)`, the way it was enabled) cache-dit")
    return found


def reset_stateful_hooks(model) -> None:
    """Reset every stateful diffusers hook under ``model``, however it was installed (``enable_cache``
    or a public ``apply_*`` function: the latter leaves ``is_cache_enabled`` False)."""
    from diffusers.hooks import HookRegistry  # heavy: surf_accel.stages loads without diffusers

    reg = HookRegistry.check_if_exists_or_initialize(model)
    # apply_* functions do not invalidate the child-registry list an earlier cache_context built, so
    # cache_context would not reach their hooks ("No cache context is set")
    reg.invalidate_child_registries_cache()
    reg.reset_stateful_hooks(recurse=True)


class StageProtocol:
    """Per call: the accelerators on every transformer the plan's stages can use, checked up front."""

    def __init__(self, plan, models: Iterable[torch.nn.Module], *, cfg: bool):
        self.plan = plan
        self._accs: dict[int, list[Accelerator]] = {}
        for m in models:
            if m is None or id(m) in self._accs:
                continue
            accs = detect(m)
            for a in accs:
                a.check(plan, m, cfg=cfg)
            self._accs[id(m)] = accs

    def accelerators(self, model) -> list[Accelerator]:
        return self._accs.get(id(model), [])

    @contextlib.contextmanager
    def stage(self, models: Sequence[torch.nn.Module], index: int) -> Iterator[StageInfo]:
        """Wrap stage ``index`` of the plan on ``models`` (every transformer the stage may call)."""
        info = StageInfo.from_plan(self.plan, index)
        models = list({id(m): m for m in models}.values())
        for m in models:
            reset_stateful_hooks(m)
            for a in self.accelerators(m):
                a.stage_start(m, info)
        try:
            yield info
        finally:
            for m in models:
                for a in self.accelerators(m):
                    a.stage_end(m, info)
                reset_stateful_hooks(m)
                if hasattr(m, _STEP_ATTR):
                    delattr(m, _STEP_ATTR)

    @staticmethod
    def step(models: Sequence[torch.nn.Module], stage: StageInfo, index: int, sigma: float, timestep) -> StepInfo:
        """Publish step ``index`` of ``stage`` on ``models`` (read by the adapters' ``branch``)."""
        info = StepInfo(stage, index, float(sigma), float(timestep))
        for m in models:
            setattr(m, _STEP_ATTR, info)
        return info
