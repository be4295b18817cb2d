"""Accelerators under identity and at the API's edges (findings 12, 13, 14).

12: diffusers' own FasterCache state check (tests/pipelines/test_pipelines_common.py,
``FasterCacheTesterMixin.test_faster_cache_state``, with HunyuanVideo's guidance-distilled config) run
on a tiny HunyuanVideo pipeline: passes unpatched, and must pass identity-patched.
13: ``apply_teacache`` given a pipeline says to pass its transformer.
14: cache-dit refreshed per stage with the stage's own step count: a stage longer than the call
(a refine of more steps than the request) would otherwise be cut by cache-dit's own end-of-inference
refresh in the middle, warming up again; counted on a block after the always-computed first one."""

import pytest

import surf_accel
from surf_accel import SurfConfig
from tests.integrations.accelerators.common import Calls, frames
from tests.tiny_pipelines import HY_KW, T2V_KW, tiny_hunyuan_t2v, tiny_wan_t2v


def faster_cache_state_check(pipe):
    """diffusers' test_faster_cache_state, from its logic: every hook's iteration counter is i + 1 in the
    callback of step i, and every state is reset after the call."""
    from diffusers import FasterCacheConfig
    from diffusers.hooks.faster_cache import _FASTER_CACHE_BLOCK_HOOK, _FASTER_CACHE_DENOISER_HOOK

    config = FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 901),
                               unconditional_batch_skip_range=2, attention_weight_callback=lambda _: 0.5,
                               is_guidance_distilled=True)
    config.current_timestep_callback = lambda: pipe.current_timestep
    denoiser = pipe.transformer
    denoiser.enable_cache(config)
    seen = []

    def check(p, i, t, kwargs):
        for name, module in denoiser.named_modules():
            if not hasattr(module, "_diffusers_hook"):
                continue
            if name == "":
                state = module._diffusers_hook.get_hook(_FASTER_CACHE_DENOISER_HOOK).state
            else:
                state = module._diffusers_hook.get_hook(_FASTER_CACHE_BLOCK_HOOK).state
                assert state.cache is not None and len(state.cache) == 2, "Cache should be set."
            assert state.iteration == i + 1, "Hook iteration state should have updated during inference."
        seen.append(i)
        return {}

    try:
        pipe(**dict(HY_KW, num_inference_steps=4), callback_on_step_end=check)
        assert seen == [0, 1, 2, 3]
        for name, module in denoiser.named_modules():
            if hasattr(module, "_diffusers_hook") and name:
                state = module._diffusers_hook.get_hook(_FASTER_CACHE_BLOCK_HOOK).state
                assert state.iteration == 0 and state.cache is None and state.batch_size is None
    finally:
        denoiser.disable_cache()


def test_faster_cache_state_under_identity_as_unpatched():
    pipe = tiny_hunyuan_t2v()
    faster_cache_state_check(pipe)  # diffusers' check holds for the pipeline itself
    with surf_accel.patched(pipe, SurfConfig.identity()):
        faster_cache_state_check(pipe)


def test_apply_teacache_given_a_pipeline_names_the_transformer():
    from surf_accel.integrations.accelerators import SurfTeaCacheConfig, apply_teacache

    with pytest.raises(TypeError, match=r"pipe\.transformer"):
        apply_teacache(tiny_wan_t2v(), SurfTeaCacheConfig(threshold=0.1, coefficients=(1.0, 0.0), indicator="temb"))


def test_cache_dit_warms_up_once_per_stage_of_its_own_length():
    cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is an optional dependency")
    warmup = 2
    # a 4-step call: preview 2 steps, preview_low 2, refine 6 (longer than the call)
    cfg = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=6, handoff="latent")
    pipe = tiny_wan_t2v()
    surf_accel.patch(pipe, cfg)
    tr = pipe.transformer
    # the first block always computes; the second only in warm-up (a threshold every step is below)
    cache_dit.enable_cache(tr, cache_config=cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=1e9, max_warmup_steps=warmup))
    try:
        calls = Calls(tr.blocks[1])
        frames(pipe, dict(T2V_KW, height=64, width=64, num_inference_steps=4))
        calls.remove()
        assert calls.n == 2 * warmup * 3  # CFG's two passes, each stage's warm-up once
    finally:
        surf_accel.unpatch(pipe)
        cache_dit.disable_cache(tr)
