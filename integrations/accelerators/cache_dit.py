"""cache-dit (``pip install cache-dit``, an optional dependency) under SURF.

cache-dit 1.5 offers two ways in. ``cache_dit.enable_cache(pipe)`` replaces the transformer's
``forward`` and wraps the pipeline *class*'s ``__call__`` so that its DBCache contexts are rebuilt
once per pipeline call: inside a SURF call they would cross every resolution switch (and when
cache-dit wraps the class before ``surf_accel.patch``, SURF's call never enters the wrapper at all),
so that way is refused with the fix named. ``cache_dit.enable_cache(pipe.transformer,
cache_config=DBCacheConfig(...))`` (the transformer-only way) keeps *persistent* contexts that its
public ``cache_dit.refresh_context(transformer, num_inference_steps=N)`` rebuilds: SURF calls it at
every stage start with the stage's step count, so each stage starts from fresh contexts (warm-up,
step counters, cached residuals), exactly as a call of that many steps would, and at the end of the
call with the call's own step count (what cache-dit asks of a caller whose step count changes).

cache-dit tells the CFG branches apart by call parity (``enable_separate_cfg``: the even calls of a
step are the conditional ones, unless ``cfg_compute_first``); SURF's adapters call the conditional
branch first, so a stage with another number of passes per step than the config expects (a refine
without guidance, true CFG on HunyuanVideo) is refused with the setting named. Nothing here imports
cache-dit until a cache-dit transformer is found: the check reads the marks it leaves.
"""

from __future__ import annotations

from surf_accel.stages import Accelerator, AcceleratorKind, StageInfo, cache_threshold

_ALTERNATIVES = ("surf_accel's TeaCache (surf_accel.integrations.accelerators.apply_teacache) or diffusers' "
                 "FirstBlockCacheConfig, which SURF resets at every stage")


def is_cache_dit(model) -> bool:
    """Whether cache-dit's ``enable_cache`` has replaced ``model``'s forward."""
    return bool(getattr(model, "_is_cached", False)) and hasattr(model, "_original_forward")


def _cache_configs(model) -> list:
    """The DBCache config of each of the transformer's cache contexts (``cache_dit.summary``)."""
    import cache_dit  # optional dependency

    stats = cache_dit.summary(model, logging=False)
    return [s.cache_options["cache_config"] for s in stats if s.cache_options.get("cache_config") is not None]


class CacheDiT(Accelerator):
    is_cache = True
    name = "cache-dit"

    def check(self, plan, model, *, cfg: bool) -> None:
        manager = getattr(model, "_context_manager", None)
        if manager is None or not manager.persistent_context:
            raise ValueError(
                "cache-dit is enabled on the whole pipeline (cache_dit.enable_cache(pipe)); its cache contexts span "
                "one pipeline call and would carry DBCache state across SURF's resolution switches. Enable it on the "
                "transformer instead, which SURF refreshes at every stage: cache_dit.disable_cache(pipe) (undo in "
                "the reverse order of enabling, surf_accel.unpatch first if SURF was patched after cache-dit), then "
                "cache_dit.enable_cache(pipe.transformer, cache_config=DBCacheConfig(...)); or use " + _ALTERNATIVES)
        for config in _cache_configs(model):
            if config.cfg_compute_first:
                raise ValueError("DBCacheConfig(cfg_compute_first=True) expects the unconditional branch first in "
                                 "each step; SURF calls the conditional branch first, as the pipelines do. Set "
                                 "cfg_compute_first=False")
            separate = bool(config.enable_separate_cfg)
            for s in plan.stages:
                if s.model == "trained_refiner":
                    continue  # another model: cache-dit is not on it
                two = (s.guidance > 1.0) if s.guidance is not None else cfg
                if two != separate:
                    raise ValueError(
                        f"cache-dit on this {type(model).__name__} is set up for {2 if separate else 1} transformer "
                        f"pass(es) per step (DBCacheConfig(enable_separate_cfg={separate})), but SURF's {s.name} "
                        f"stage makes {2 if two else 1}; cache-dit would take one branch's calls for the other's. "
                        + ("Set SurfConfig(refine_guidance=None) to keep guidance in the refine, or "
                           if s.guidance is not None else "")
                        + f"enable cache-dit with DBCacheConfig(enable_separate_cfg={two})")

    def stage_start(self, model, stage: StageInfo) -> None:
        import cache_dit  # optional dependency

        cache_dit.refresh_context(model, num_inference_steps=stage.steps)

    def stage_end(self, model, stage: StageInfo) -> None:
        import cache_dit  # optional dependency

        # left as cache-dit expects it for a call of the request's step count (the next stage refreshes again)
        cache_dit.refresh_context(model, num_inference_steps=stage.request_steps)


def _detect(model) -> list[Accelerator]:
    return [CacheDiT()] if is_cache_dit(model) else []


def _install(pipe, value: str) -> str:
    """``--cache cache-dit[:T]``: DBCache on the transformer (persistent contexts, refreshed by SURF per
    stage) with cache-dit's other defaults."""
    try:
        import cache_dit  # optional dependency
    except ImportError:
        raise ValueError("--cache cache-dit needs cache-dit installed (pip install cache-dit), or use --cache "
                         "teacache:T or --cache fbc:T") from None
    cfg = cache_dit.DBCacheConfig(residual_diff_threshold=cache_threshold("cache-dit", value)) if value else \
        cache_dit.DBCacheConfig()
    cache_dit.enable_cache(pipe.transformer, cache_config=cfg)
    return f"cache-dit DBCache on the transformer (residual_diff_threshold {cfg.residual_diff_threshold})"


def _remove(model) -> None:
    if is_cache_dit(model):
        import cache_dit  # optional dependency, present since it is installed on the model

        cache_dit.disable_cache(model)


KIND = AcceleratorKind("cache-dit", _detect, "cache-dit[:THRESHOLD]", _install, remove=_remove)
