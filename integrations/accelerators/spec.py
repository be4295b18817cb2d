"""``--cache SPEC`` of ``surf-accel generate``: one cache on the pipeline's transformer, by name."""

from __future__ import annotations

from typing import Optional, Sequence

FORMS = "teacache:THRESHOLD, fbc:THRESHOLD, seacache[:THRESHOLD], cache-dit[:THRESHOLD] (magcache is refused)"


def _threshold(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--cache {name}:{value}: the threshold must be a number (forms: {FORMS})") from None


def install_cache(pipe, spec: str, *, teacache_fit: Optional[tuple[str, Sequence[float]]] = None) -> str:
    """Install the cache ``spec`` names on ``pipe.transformer``; returns what was installed.
    ``ValueError`` naming the accepted forms for anything else. ``teacache_fit``: (indicator,
    coefficients) for a model TeaCache published none for (the toy world), instead of the published
    polynomial picked from the model's config."""
    name, _, value = spec.partition(":")
    name = name.strip().lower()
    tr = pipe.transformer
    if name == "teacache" and value:
        from surf_accel.integrations.accelerators.teacache import TeaCacheConfig, apply_teacache

        indicator, coefficients = teacache_fit or (None, None)  # None: published, picked from the config
        apply_teacache(tr, TeaCacheConfig(threshold=_threshold(name, value), indicator=indicator,
                                          coefficients=coefficients))
        return f"TeaCache (threshold {value}, {tr._surf_teacache.indicator} indicator)"
    if name == "fbc" and value:
        from diffusers import FirstBlockCacheConfig

        tr.enable_cache(FirstBlockCacheConfig(threshold=_threshold(name, value)))
        return f"FirstBlockCache (threshold {value})"
    if name == "seacache":
        from diffusers import SeaCacheConfig

        tr.enable_cache(SeaCacheConfig(threshold=_threshold(name, value)) if value else SeaCacheConfig())
        return "SeaCache"
    if name == "magcache":
        raise ValueError("--cache magcache: MagCache needs mag_ratios calibrated for the model and its whole "
                         "num_inference_steps-long schedule, which SURF's stages do not run; use --cache teacache:T "
                         "or --cache fbc:T")
    if name == "cache-dit":
        try:
            import cache_dit
        except ImportError:
            raise ValueError("--cache cache-dit needs cache-dit installed (pip install cache-dit), or use --cache "
                             "teacache:T or --cache fbc:T") from None
        # on the transformer (persistent contexts, refreshed by SURF per stage); cache-dit's other defaults
        cfg = cache_dit.DBCacheConfig(residual_diff_threshold=_threshold(name, value)) if value else \
            cache_dit.DBCacheConfig()
        cache_dit.enable_cache(tr, cache_config=cfg)
        return f"cache-dit DBCache on the transformer (residual_diff_threshold {cfg.residual_diff_threshold})"
    raise ValueError(f"--cache {spec!r}: unknown form; use one of {FORMS}")
