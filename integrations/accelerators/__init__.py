"""Stacking SURF with other accelerators (docs/design.md 4): the stage protocol (``stages``) and one
module per accelerator. Importing this package registers every detector."""

from surf_accel.integrations.accelerators import cache_dit, diffusers_caches  # noqa: F401  (detectors)
from surf_accel.integrations.accelerators.stages import (Accelerator, StageInfo, StageProtocol, StepInfo,
                                                         cache_context_kwargs, current_step, detect)
from surf_accel.integrations.accelerators.teacache import (MODELS as TEACACHE_MODELS, TeaCacheConfig, apply_teacache,
                                                           remove_teacache, teacache_stats)

__all__ = ["Accelerator", "StageInfo", "StageProtocol", "StepInfo", "TEACACHE_MODELS", "TeaCacheConfig",
           "apply_teacache", "cache_context_kwargs", "current_step", "detect", "remove_teacache", "teacache_stats"]
