"""cache-dit (``pip install cache-dit``, an optional dependency) under SURF: refused, with the reason.

cache-dit 1.5's ``cache_dit.enable_cache(pipe)`` replaces the transformer's ``forward`` (marking it
``_is_cached``) and wraps the pipeline *class*'s ``__call__`` so that its DBCache contexts are reset
once per pipeline call. SURF runs several stages at different resolutions inside one call, so those
contexts (residual caches, warm-up and step counters) would cross every resolution switch; and when
cache-dit wraps the class before ``surf_accel.patch``, SURF's call never enters the wrapper at all.
Refreshing cache-dit's contexts per stage needs its private context manager (``_context_manager``,
``reset_context``) and is not done here, so a cache-dit transformer is refused at the call with the
alternatives named. Nothing here imports cache-dit: the check reads the marks it leaves.
"""

from __future__ import annotations

from surf_accel.integrations.accelerators.stages import DETECTORS, Accelerator


def is_cache_dit(model) -> bool:
    """Whether cache-dit's ``enable_cache`` has replaced ``model``'s forward."""
    return bool(getattr(model, "_is_cached", False)) and hasattr(model, "_original_forward")


class CacheDiT(Accelerator):
    is_cache = True
    name = "cache-dit"

    def check(self, plan, model, *, cfg: bool) -> None:
        raise ValueError(
            "cache-dit is enabled on this pipeline's transformer; its cache contexts span one pipeline call and would "
            "carry DBCache state across SURF's resolution switches (cache-dit has no public per-stage refresh). "
            "Call cache_dit.disable_cache(pipe) before using SURF (it wraps the pipeline class's __call__: undo in the "
            "reverse order of enabling, surf_accel.unpatch first if SURF was patched after cache-dit), and use "
            "surf_accel's TeaCache "
            "(surf_accel.integrations.accelerators.apply_teacache) or diffusers' FirstBlockCacheConfig, which "
            "SURF resets at every stage")


def _detect(model) -> list[Accelerator]:
    return [CacheDiT()] if is_cache_dit(model) else []


DETECTORS.append(_detect)
