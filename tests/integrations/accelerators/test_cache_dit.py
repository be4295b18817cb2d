"""cache-dit with SURF (integrations/accelerators/cache_dit.py), with the real package. On the
transformer (persistent contexts), refreshed per stage. Oracles: SURF alone (a threshold that never
caches), DBCache's warm-up rule written out per stage (calls of a block after the first
``Fn_compute_blocks``), and the refusals' messages. On the whole pipeline: refused before any
compute, whichever is enabled first; after cache_dit.disable_cache the SURF call is SURF's own again."""

import pytest

import surf_accel
from tests.integrations.accelerators.common import HY_CALL, HY_CFG, STAGE_STEPS, STAGED, WAN_KW, Calls, \
    assert_equal, frames
from tests.tiny_pipelines import tiny_hunyuan_t2v, tiny_wan_t2v

cache_dit = pytest.importorskip("cache_dit", reason="cache-dit is an optional dependency (pip install cache-dit)")
WARMUP = 2


def _db(threshold, **kw):
    # the first block always computes (Fn), none at the end (Bn); the rest cached below the threshold
    return cache_dit.DBCacheConfig(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold,
                                   max_warmup_steps=WARMUP, **kw)


CASES = [("wan", tiny_wan_t2v, WAN_KW, 2, lambda t: t.blocks[1]),
         ("hunyuan", tiny_hunyuan_t2v, HY_CALL, 1, lambda t: t.single_transformer_blocks[1])]


@pytest.mark.parametrize("name, make, kw, passes, later", CASES, ids=[c[0] for c in CASES])
def test_on_the_transformer_every_stage_starts_fresh(name, make, kw, passes, later):
    pipe = make()
    surf_accel.patch(pipe, STAGED)
    ref = frames(pipe, kw)
    tr = pipe.transformer
    cache_dit.enable_cache(tr, cache_config=_db(0.0))  # never below 0: every call computes every block
    try:
        calls = Calls(later(tr))
        assert_equal(frames(pipe, kw), ref)
        assert calls.n == passes * sum(n for _, n in STAGE_STEPS)
        calls.remove()
        # always below: each stage computes its first WARMUP steps only, as a call of that many steps would,
        # also after an unpatched call left the contexts warm with residuals of the request's size
        cache_dit.refresh_context(tr, cache_config=_db(1e9))
        surf_accel.unpatch(pipe)
        frames(pipe, kw)
        surf_accel.patch(pipe, STAGED)
        calls = Calls(later(tr))
        out = frames(pipe, kw)
        assert calls.n == passes * WARMUP * len(STAGE_STEPS)
        calls.remove()
        assert not (out == ref).all()
        configs = [s.cache_options["cache_config"] for s in cache_dit.summary(tr, logging=False)]
        assert configs[-1].num_inference_steps == kw["num_inference_steps"]  # left for a call of the request's steps
    finally:
        surf_accel.unpatch(pipe)
        cache_dit.disable_cache(tr)


def test_branch_layout_mismatch_is_refused():
    wan, hy = tiny_wan_t2v(), tiny_hunyuan_t2v()
    cache_dit.enable_cache(wan.transformer, cache_config=_db(0.1))
    cache_dit.enable_cache(hy.transformer, cache_config=_db(0.1))
    try:
        with surf_accel.patched(wan, STAGED.replace(refine_guidance=1.0)):
            with pytest.raises(ValueError, match=r"refine stage makes 1.*refine_guidance=None"):
                frames(wan, WAN_KW)
        with surf_accel.patched(hy, STAGED):
            with pytest.raises(ValueError, match=r"enable_separate_cfg=True"):
                frames(hy, HY_CFG)  # true CFG: two passes, cache-dit set up for one
        cache_dit.refresh_context(wan.transformer, cache_config=_db(0.1, cfg_compute_first=True,
                                                                     cfg_diff_compute_separate=False))
        with surf_accel.patched(wan, STAGED):
            with pytest.raises(ValueError, match="cfg_compute_first=False"):
                frames(wan, WAN_KW)
    finally:
        cache_dit.disable_cache(wan.transformer)
        cache_dit.disable_cache(hy.transformer)


@pytest.mark.parametrize("order", ["cache_dit_first", "surf_first"])
def test_on_the_pipeline_is_refused_and_removable(order):
    pipe = tiny_wan_t2v()
    cls, own_call = type(pipe), type(pipe).__call__
    surf_accel.patch(pipe, STAGED)
    ref = frames(pipe, WAN_KW)
    surf_accel.unpatch(pipe)
    calls = []
    h = pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        if order == "cache_dit_first":
            cache_dit.enable_cache(pipe)
            surf_accel.patch(pipe, STAGED)
        else:
            surf_accel.patch(pipe, STAGED)
            cache_dit.enable_cache(pipe)
        with pytest.raises(ValueError, match=r"whole pipeline.*cache_dit.disable_cache\(pipe\).*enable_cache\("
                                             r"pipe.transformer"):
            frames(pipe, WAN_KW)
        assert calls == []  # refused before the first transformer call
    finally:
        # cache-dit wraps the class's __call__ (the SURF subclass's when SURF came first): undo in reverse order
        if order == "cache_dit_first":
            surf_accel.unpatch(pipe)
            cache_dit.disable_cache(pipe)
        else:
            cache_dit.disable_cache(pipe)
            surf_accel.unpatch(pipe)
        h.remove()
    assert cls.__call__ is own_call and type(pipe) is cls
    with surf_accel.patched(pipe, STAGED):
        assert_equal(frames(pipe, WAN_KW), ref)


def test_cli_spec_enables_it_on_the_transformer():
    from surf_accel.registry import install_cache

    pipe = tiny_wan_t2v()
    try:
        assert install_cache(pipe, "cache-dit:0.12") == ("cache-dit DBCache on the transformer "
                                                         "(residual_diff_threshold 0.12)")
        assert pipe.transformer._context_manager.persistent_context
        configs = [s.cache_options["cache_config"] for s in cache_dit.summary(pipe.transformer, logging=False)]
        assert configs[-1].residual_diff_threshold == 0.12
    finally:
        cache_dit.disable_cache(pipe.transformer)


def test_with_another_cache_is_refused():
    from diffusers import FirstBlockCacheConfig

    pipe = tiny_wan_t2v()
    cache_dit.enable_cache(pipe.transformer, cache_config=_db(0.1))
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.1))
    try:
        with surf_accel.patched(pipe, STAGED), pytest.raises(ValueError, match=r"more than one cache installed "
                                                                               r"\(FirstBlockCache, cache-dit\)"):
            frames(pipe, WAN_KW)
    finally:
        pipe.transformer.disable_cache()
        cache_dit.disable_cache(pipe.transformer)
