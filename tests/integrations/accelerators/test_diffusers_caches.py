"""diffusers' caches (integrations/accelerators/diffusers_caches.py) with SURF on tiny Wan and
HunyuanVideo pipelines. Oracles: the unpatched pipeline with the same cache (SURF's identity plan
must give its output bit for bit, which also checks the cache_context fields SURF passes), SURF
alone (a cache setting that never skips), PyramidAttentionBroadcast's rule replayed by hand on the
recorded timesteps, and the refusals' messages."""

import numpy as np
import pytest
import torch
from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                       SeaCacheConfig, TaylorSeerCacheConfig)
from diffusers.hooks import (apply_faster_cache, apply_first_block_cache, apply_mag_cache,
                             apply_pyramid_attention_broadcast, apply_sea_cache, apply_taylorseer_cache)

import surf_accel
from surf_accel import SurfConfig
from tests.integrations.accelerators.common import HY_CALL, HY_CFG, STAGE_STEPS, STAGED, WAN_KW, Calls, assert_equal, \
    frames
from tests.tiny_pipelines import tiny_hunyuan_t2v, tiny_wan_t2v

APPLY = {FirstBlockCacheConfig: apply_first_block_cache, PyramidAttentionBroadcastConfig:
         apply_pyramid_attention_broadcast, FasterCacheConfig: apply_faster_cache, MagCacheConfig: apply_mag_cache,
         SeaCacheConfig: apply_sea_cache, TaylorSeerCacheConfig: apply_taylorseer_cache}


def _remove_all(model):
    """Remove every diffusers hook (either way of enabling a cache)."""
    from diffusers.hooks import HookRegistry

    if model.is_cache_enabled:
        model.disable_cache()
    for m in model.modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None:
            for name in list(reg.hooks):
                reg.remove_hook(name, recurse=False)
    HookRegistry.check_if_exists_or_initialize(model).invalidate_child_registries_cache()


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    for name in ("wan", "hy"):
        if name in request.fixturenames:
            p = request.getfixturevalue(name)
            _remove_all(p.transformer)
            surf_accel.unpatch(p)


def _install(model, cfg, way):
    if way == "enable_cache":
        model.enable_cache(cfg)
    else:
        APPLY[type(cfg)](model, cfg)


def _now(pipe):
    return lambda: pipe.current_timestep


# TaylorSeer's default patterns (``^blocks.*attn`` by fullmatch) miss Wan's attn1/attn2: name them
_TAYLOR_TARGETS = {"wan": [r"blocks\.\d+\.attn1"], "hy": [r"transformer_blocks\.\d+\.attn"]}


# settings that skip on the tiny models (each checked to change the output)
def _skipping(fam, kind, pipe):
    return {
        "fbc": lambda: FirstBlockCacheConfig(threshold=0.6),
        "pab": lambda: PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=2,
                                                       spatial_attention_timestep_skip_range=(0, 1000),
                                                       current_timestep_callback=_now(pipe)),
        "taylorseer": lambda: TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2,
                                                    taylor_factors_dtype=torch.float32,
                                                    cache_identifiers=_TAYLOR_TARGETS[fam]),
        "seacache": lambda: SeaCacheConfig(threshold=2.0),
        "magcache": lambda: MagCacheConfig(mag_ratios=[1.0] * 8, num_inference_steps=8, retention_ratio=0.25),
        "fastercache": lambda: FasterCacheConfig(spatial_attention_block_skip_range=2, is_guidance_distilled=True,
                                                 spatial_attention_timestep_skip_range=(-1, 900),
                                                 current_timestep_callback=_now(pipe)),
    }[kind]()


IDENTITY_CASES = [("wan", k) for k in ("fbc", "pab", "taylorseer", "seacache", "magcache")] + \
                 [("hy", k) for k in ("fbc", "pab", "taylorseer", "fastercache")]


@pytest.mark.parametrize("fam, kind", IDENTITY_CASES)
def test_identity_plan_with_a_cache_equals_the_pipeline_with_it(request, fam, kind):
    pipe = request.getfixturevalue(fam)
    kw = WAN_KW if fam == "wan" else HY_CALL
    plain = frames(pipe, kw)
    pipe.transformer.enable_cache(_skipping(fam, kind, pipe))
    ref = frames(pipe, kw)
    assert not np.array_equal(ref, plain), "this setting was meant to skip work on the tiny model"
    with surf_accel.patched(pipe, SurfConfig.identity()):
        assert_equal(frames(pipe, kw), ref)
        assert_equal(frames(pipe, kw), ref)  # a second call: nothing left over from the first


NEVER = {"fbc": lambda fam: FirstBlockCacheConfig(threshold=-1.0),
         "taylorseer": lambda fam: TaylorSeerCacheConfig(disable_cache_before_step=100,
                                                         cache_identifiers=_TAYLOR_TARGETS[fam])}


@pytest.mark.parametrize("fam", ["wan", "hy"])
@pytest.mark.parametrize("kind", list(NEVER))
@pytest.mark.parametrize("way, order", [("enable_cache", "cache_first"), ("apply", "surf_first"),
                                        ("apply", "cache_first")])
def test_never_skipping_cache_equals_surf_alone(fam, kind, way, order):
    """Both ways of enabling, before or after patching: the stages run with the cache's state reset at
    each (apply_first_block_cache used to crash at the first switch; the patch order does not matter
    since SURF patches the pipeline and the cache the transformer). Fresh pipelines: the first call
    caches the list of modules that carry a hook registry, which an apply_* function then makes
    stale; a module already carrying an (emptied) registry from an earlier test would hide that."""
    pipe = {"wan": tiny_wan_t2v, "hy": tiny_hunyuan_t2v}[fam]()
    kw = WAN_KW if fam == "wan" else HY_CALL
    with surf_accel.patched(pipe, STAGED):
        ref = frames(pipe, kw)
    if order == "cache_first":
        _install(pipe.transformer, NEVER[kind](fam), way)
        surf_accel.patch(pipe, STAGED)
    else:
        surf_accel.patch(pipe, STAGED)
        _install(pipe.transformer, NEVER[kind](fam), way)
    assert_equal(frames(pipe, kw), ref)


@pytest.mark.parametrize("fam, kind", [("wan", "fbc"), ("wan", "pab"), ("wan", "taylorseer"), ("wan", "seacache"),
                                       ("hy", "fbc"), ("hy", "fastercache"), ("hy", "taylorseer")])
def test_skipping_cache_under_surf_stages(request, fam, kind):
    """Skipping settings across SURF's switches (FasterCache, reset alone, starts a stage inside its
    window with an empty cache and crashes): finite output, different from SURF alone."""
    pipe = request.getfixturevalue(fam)
    kw = WAN_KW if fam == "wan" else HY_CALL
    surf_accel.patch(pipe, STAGED)
    ref = frames(pipe, kw)
    APPLY[type(cfg := _skipping(fam, kind, pipe))](pipe.transformer, cfg)
    out = frames(pipe, kw)
    assert np.isfinite(out).all() and not np.array_equal(out, ref)


def test_pyramid_attention_broadcast_follows_its_rule_per_stage(wan):
    """PAB (spatial range 3, window 300 < t < 900): per stage its counter starts at 0 (compute), then
    computes when outside the window or on every 3rd call; replayed by hand on the timesteps recorded at
    each transformer call, counted at the self-attention's query projection."""
    tr = wan.transformer
    surf_accel.patch(wan, STAGED)
    tr.enable_cache(PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=3,
                                                    spatial_attention_timestep_skip_range=(300, 900),
                                                    current_timestep_callback=_now(wan)))
    ts = []
    h = tr.register_forward_pre_hook(lambda m, a: ts.append(float(wan.current_timestep)))
    q = Calls(tr.blocks[0].attn1.to_q)
    frames(wan, WAN_KW)
    h.remove()
    q.remove()
    want, k = 0, 0
    for _, n in STAGE_STEPS:
        for it in range(2 * n):  # cond and uncond calls share the module's counter
            t = ts[k]
            k += 1
            want += it == 0 or not (300 < t < 900) or it % 3 == 0
    assert k == len(ts) == 24 and q.n == want and want < 24


def test_refusals_name_the_setting(wan, hy):
    surf_accel.patch(wan, STAGED)
    tr = wan.transformer
    cases = [
        (MagCacheConfig(mag_ratios=[1.0] * 8, num_inference_steps=8), "mag_ratios and retention_ratio"),
        (TaylorSeerCacheConfig(disable_cache_after_step=6, cache_identifiers=_TAYLOR_TARGETS["wan"]),
         "disable_cache_after_step=None"),
        (FasterCacheConfig(current_timestep_callback=_now(wan)), "is_guidance_distilled=True"),
        (FasterCacheConfig(current_timestep_callback=_now(wan), is_guidance_distilled=True), "is not one"),
    ]
    for cfg, msg in cases:
        tr.enable_cache(cfg)
        with pytest.raises(ValueError, match=msg):
            frames(wan, WAN_KW)
        tr.disable_cache()
    from diffusers.hooks import TextKVCacheConfig

    tr.enable_cache(TextKVCacheConfig())  # a NucleusMoE-Image cache: nothing to cache on Wan
    with pytest.raises(ValueError, match="NucleusMoE-Image blocks only"):
        frames(wan, WAN_KW)
    tr.disable_cache()
    # SeaCache has an indicator for Wan text-to-video only: on HunyuanVideo it would run uncached
    surf_accel.patch(hy, STAGED)
    hy.transformer.enable_cache(SeaCacheConfig())
    with pytest.raises(ValueError, match="raw_vision_callback"):
        frames(hy, HY_CALL)
    hy.transformer.disable_cache()
    # FasterCache's attention cache would be shared by the true-CFG branches
    hy.transformer.enable_cache(_skipping("hy", "fastercache", hy))
    with pytest.raises(ValueError, match="true classifier-free guidance"):
        frames(hy, HY_CFG)


def test_two_diffusers_caches_refused(wan):
    surf_accel.patch(wan, STAGED)
    apply_first_block_cache(wan.transformer, FirstBlockCacheConfig(threshold=0.05))
    apply_taylorseer_cache(wan.transformer, TaylorSeerCacheConfig(cache_identifiers=_TAYLOR_TARGETS["wan"]))
    with pytest.raises(ValueError, match=r"more than one cache installed \(FirstBlockCache, TaylorSeer\)"):
        frames(wan, WAN_KW)


def test_faster_cache_computes_each_stage_start_then_follows_its_rule(hy):
    """FasterCache (spatial range 2, window -1 < t < 900) on HunyuanVideo: per stage the first call
    computes (its counter is seeded with the range), later calls inside the window compute every 2nd
    call; replayed by hand on the recorded timesteps, counted at the first block's query projection."""
    tr = hy.transformer
    surf_accel.patch(hy, STAGED)
    tr.enable_cache(_skipping("hy", "fastercache", hy))
    ts = []
    h = tr.register_forward_pre_hook(lambda m, a: ts.append(float(hy.current_timestep)))
    q = Calls(tr.transformer_blocks[0].attn.to_q)
    frames(hy, HY_CALL)
    h.remove()
    q.remove()
    want, k = 0, 0
    for _, n in STAGE_STEPS:
        for it in range(2, 2 + n):  # one pass per step; the counter starts at the range, 2
            want += not (-1 < ts[k] < 900) or it % 2 == 0
            k += 1
    assert k == len(ts) == 12 and q.n == want and want < 12
