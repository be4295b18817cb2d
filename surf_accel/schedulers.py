"""The schedulers SURF drives, and the fresh per-stage scheduler every family uses.

SURF supports the two flow-matching schedulers Wan ships with: ``FlowMatchEulerDiscreteScheduler`` and
``UniPCMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction")``, both with a static
shift. Each stage gets a *fresh* scheduler of the pipeline's class, configured with shift 1 and handed
the stage's already shifted sigmas, so a multistep history never crosses a resolution switch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from surf_accel.planner import SchedulerSpec


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
