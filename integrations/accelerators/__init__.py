"""Accelerators SURF stacks with (docs/design.md 4), one module each: surf_accel's TeaCache
(``surf_teacache``), diffusers' caches, cache-dit, the sparse preview attention and the torch.compile
watch. Each declares an ``AcceleratorKind`` (``surf_accel.stages``), registered with the built-in
families when ``surf_accel.integrations`` is imported."""

from surf_accel.integrations.accelerators.surf_teacache import (SurfTeaCacheConfig, apply_teacache, remove_teacache,
                                                                teacache_models, teacache_stats)
from surf_accel.stages import Accelerator, StageInfo, StageProtocol, StepInfo, cache_context_kwargs, current_step, detect

# The name this config had before diffusers shipped a TeaCacheConfig of its own (diffusers.hooks.teacache);
# kept so that code written for it runs unchanged.
TeaCacheConfig = SurfTeaCacheConfig

__all__ = ["Accelerator", "StageInfo", "StageProtocol", "StepInfo", "SurfTeaCacheConfig", "TeaCacheConfig",
           "apply_teacache", "cache_context_kwargs", "current_step", "detect", "remove_teacache", "teacache_models",
           "teacache_stats"]
