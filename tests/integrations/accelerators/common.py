"""Shared set-up of the stacking tests: tiny pipelines, a SURF plan with stages long enough for a
cache to skip (4 steps each), caches that skip on the tiny Wan, call recorders independent of the
code under test."""

from __future__ import annotations

import numpy as np
import torch

from surf_accel import SurfConfig
from tests.tiny_pipelines import HY_KW, T2V_KW, hunyuan_embeds

# preview 4 steps at 32 px, preview_low 4 at 16 px, refine 4 at 64 px (the request)
STAGED = SurfConfig(optimal_size=(32, 32), preview_steps=8, switch_step=4, refine_steps=4, handoff="latent")
STAGE_STEPS = (("preview", 4), ("preview_low", 4), ("refine", 4))
WAN_KW = dict(T2V_KW, height=64, width=64, num_inference_steps=8)  # CFG: cond + uncond per step
HY_CALL = dict(HY_KW, height=64, width=64, num_inference_steps=8, prompt=None,
               **hunyuan_embeds(), **hunyuan_embeds(negative=True))  # one pass per step
HY_CFG = dict(HY_CALL, true_cfg_scale=3.0)  # true CFG: a second pass


def frames(pipe, kw, seed=0):
    return pipe(generator=torch.Generator().manual_seed(seed), **kw).frames


def assert_equal(a, b):
    assert np.array_equal(np.asarray(a), np.asarray(b)), f"max diff {np.abs(np.asarray(a) - np.asarray(b)).max()}"


class Calls:
    """Counts forward calls of a module (pre-hook), so a test sees which calls computed."""

    def __init__(self, module):
        self.n = 0
        self._h = module.register_forward_pre_hook(self._hook)

    def _hook(self, m, args):
        self.n += 1

    def remove(self):
        self._h.remove()


def install_teacache(tr):
    """No retention and a threshold never reached: each stage computes its first and last steps only."""
    from surf_accel.integrations.accelerators import SurfTeaCacheConfig, apply_teacache

    apply_teacache(tr, SurfTeaCacheConfig(threshold=1e9, coefficients=(1.0, 0.0), indicator="temb", retention_steps=0))


def install_fbc(tr):
    from diffusers import FirstBlockCacheConfig

    tr.enable_cache(FirstBlockCacheConfig(threshold=0.6))


def install_cache_dit(tr):
    """cache-dit on the transformer: the first block always computes, the rest cached below 0.3."""
    import pytest

    cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is an optional dependency")
    cache_dit.enable_cache(tr, cache_config=cache_dit.DBCacheConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.3, max_warmup_steps=1))


def surf_with_cache(install, kw):
    """A tiny Wan run with SURF (``STAGED``) alone and then with the cache ``install`` puts on it:
    (the pipeline, with the cache, SURF alone's output, SURF + the cache's output, TeaCache's decisions
    or None). Checks that the cache skipped work."""
    import surf_accel
    from surf_accel.integrations.accelerators import teacache_stats
    from tests.tiny_pipelines import tiny_wan_t2v

    pipe = tiny_wan_t2v("euler")
    with surf_accel.patched(pipe, STAGED):
        alone = frames(pipe, kw)
        install(pipe.transformer)
        cached = frames(pipe, kw)
        decisions = teacache_stats(pipe.transformer) if install is install_teacache else None
    assert not np.array_equal(np.asarray(cached), np.asarray(alone))  # the cache skipped work
    return pipe, alone, cached, decisions
