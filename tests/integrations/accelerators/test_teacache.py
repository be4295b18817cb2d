"""TeaCache (integrations/accelerators/surf_teacache.py) on tiny Wan and HunyuanVideo pipelines, with and
without SURF. Oracles: SURF alone (a threshold that never skips must change nothing), TeaCache's
published rule replayed by hand on indicator traces recorded by plain torch hooks, block call counts,
and the unpatched pipeline."""

import numpy as np
import pytest
import torch

import surf_accel
from surf_accel.integrations.accelerators import (SurfTeaCacheConfig, apply_teacache, remove_teacache, teacache_models,
                                                  teacache_stats)
from tests.integrations.accelerators.common import HY_CALL, HY_CFG, STAGE_STEPS, STAGED, WAN_KW, Calls, assert_equal, \
    frames
from tests.tiny_pipelines import tiny_wan_i2v

NEVER = -1e9  # accumulated change is never below this: every call computes


@pytest.fixture(autouse=True)
def _clean(request):
    yield
    for name in ("wan", "hy"):
        if name in request.fixturenames:
            p = request.getfixturevalue(name)
            remove_teacache(p.transformer)
            surf_accel.unpatch(p)


def _recorder(pipe, indicator):
    """Indicator per transformer call, read by plain torch hooks (not TeaCache's)."""
    trace, tr = [], pipe.transformer
    if indicator == "temb":
        h = tr.condition_embedder.register_forward_hook(lambda m, a, out: trace.append(out[0].detach().float()))
    elif indicator == "timestep_proj":
        h = tr.blocks[0].register_forward_pre_hook(lambda m, a: trace.append(a[2].detach().float()))
    else:  # HunyuanVideo: the first double block's modulated input
        def pre(m, a):
            with torch.no_grad():
                trace.append(m.norm1(a[0], emb=a[2])[0].detach().float())
        h = tr.transformer_blocks[0].register_forward_pre_hook(pre)
    return trace, h


def _hand_rule(trace, poly, threshold, retention, branches):
    """TeaCache's published rule per branch, stage by stage (state fresh at every stage)."""
    out, k = {}, 0
    for name, n in STAGE_STEPS:
        prev, acc, dec = {}, {}, {b: [] for b in branches}
        for i in range(n):
            for b in branches:
                ind = trace[k]
                k += 1
                if b not in prev or i < retention or i == n - 1:
                    compute = True
                else:
                    x = float((ind - prev[b]).abs().mean() / prev[b].abs().mean())
                    acc[b] = acc.get(b, 0.0) + float(np.polyval(poly, x))
                    compute = not acc[b] < threshold
                if compute:
                    acc[b] = 0.0
                prev[b] = ind
                dec[b].append(compute)
        out[name] = dec
    assert k == len(trace)
    return out


CASES = [("wan", "temb", WAN_KW, ("cond", "uncond")), ("wan", "timestep_proj", WAN_KW, ("cond", "uncond")),
         ("hy", "modulated_input", HY_CALL, ("cond",)), ("hy", "modulated_input", HY_CFG, ("cond", "uncond"))]


@pytest.mark.parametrize("fam, indicator, kw, branches", CASES)
def test_never_skipping_equals_surf_alone_and_decisions_follow_the_published_rule(request, fam, indicator, kw,
                                                                                   branches):
    pipe = request.getfixturevalue(fam)
    tr = pipe.transformer
    surf_accel.patch(pipe, STAGED)
    ref = frames(pipe, kw)
    # never skips: bit-identical to SURF alone, every call computed in every stage
    apply_teacache(tr, SurfTeaCacheConfig(threshold=NEVER, coefficients=(1.0, 0.0), indicator=indicator))
    trace, h = _recorder(pipe, indicator)
    assert_equal(frames(pipe, kw), ref)
    h.remove()
    stats = teacache_stats(tr)
    assert list(stats) == [s for s, _ in STAGE_STEPS]
    assert all(d["skipped"] == 0 and d["computed"] == n for (s, n) in STAGE_STEPS for d in stats[s].values())
    remove_teacache(tr)

    # a threshold that skips some calls: decisions = the hand rule on this run's recorded indicators
    poly = (2.0, 0.0)  # 2x, highest power first (read lowest first it would be the constant 2)
    xs = [float((b - a).abs().mean() / a.abs().mean()) for a, b in zip(trace, trace[len(branches):])
          if a.shape == b.shape]
    threshold = 2.0 * float(np.median(xs)) * 1.5
    apply_teacache(tr, SurfTeaCacheConfig(threshold=threshold, coefficients=poly, indicator=indicator, retention_steps=1))
    trace, h = _recorder(pipe, indicator)
    later = Calls(tr.blocks[1].attn1 if fam == "wan" else tr.single_transformer_blocks[0].attn)  # inside a block
    out = frames(pipe, kw)
    h.remove()
    later.remove()
    want = _hand_rule(trace, poly, threshold, 1, branches)
    got = {s: {b: d["decisions"] for b, d in v.items()} for s, v in teacache_stats(tr).items()}
    assert got == want
    skipped = sum(not c for v in want.values() for d in v.values() for c in d)
    assert skipped > 0, "the threshold was meant to make some calls skip"
    assert later.n == len(trace) - skipped  # a skipped call runs no later block
    assert not np.array_equal(out, ref)


def test_published_default_indicator_and_retention(wan):
    """A published key: the checkpoint's default indicator and its retention (5 steps for the timestep
    projection, so a 4-step stage computes every step), its polynomial as published."""
    tr = wan.transformer
    surf_accel.patch(wan, STAGED)
    apply_teacache(tr, SurfTeaCacheConfig(threshold=10.0, model="wan2.1-t2v-14b"))
    shared = tr._surf_teacache
    assert (shared.indicator, shared.retention) == ("timestep_proj", 5)
    assert shared.poly == teacache_models()["wan2.1-t2v-14b"].coefficients["timestep_proj"]
    assert shared.poly[0] == pytest.approx(-3.03318725e+05)  # TeaCache4Wan2.1, use_ret_steps, 14B
    frames(wan, WAN_KW)
    assert all(d["skipped"] == 0 for v in teacache_stats(tr).values() for d in v.values())
    remove_teacache(tr)
    apply_teacache(tr, SurfTeaCacheConfig(threshold=0.08, model="wan2.1-t2v-1.3b"))
    assert (tr._surf_teacache.indicator, tr._surf_teacache.retention) == ("temb", 1)


def test_state_never_crosses_a_resolution_change(wan):
    """No retention: only a fresh state forces a stage's first call, so every stage starting with a
    compute shows the reset; the same calls without a reset raise instead of mixing resolutions."""
    tr = wan.transformer
    surf_accel.patch(wan, STAGED)
    apply_teacache(tr, SurfTeaCacheConfig(threshold=1e9, coefficients=(1.0, 0.0), indicator="temb", retention_steps=0))
    frames(wan, WAN_KW)
    stats = teacache_stats(tr)
    for s, n in STAGE_STEPS:
        for d in stats[s].values():  # compute, skip everything possible, compute the last step
            assert d["decisions"] == [True] + [False] * (n - 2) + [True]
    t = torch.tensor([500.0])
    txt = torch.randn(1, 16, 32)
    with torch.no_grad():
        for size in (4, 8):
            with tr.cache_context("cond", step_index=1, num_inference_steps=4):
                if size == 8:
                    with pytest.raises(RuntimeError, match="resolution change"):
                        tr(hidden_states=torch.randn(1, 16, 2, size, size), timestep=t, encoder_hidden_states=txt)
                else:
                    tr(hidden_states=torch.randn(1, 16, 2, size, size), timestep=t, encoder_hidden_states=txt)


def test_without_surf_wan_and_hunyuan(wan, hy):
    # Wan's pipeline passes the step index and count: never skipping equals the plain pipeline
    ref = frames(wan, WAN_KW)
    apply_teacache(wan.transformer, SurfTeaCacheConfig(threshold=NEVER, coefficients=(1.0, 0.0), indicator="temb"))
    assert_equal(frames(wan, WAN_KW), ref)
    assert teacache_stats(wan.transformer)["call"]["cond"]["computed"] == 8
    # HunyuanVideoPipeline passes none: the step count must be given
    apply_teacache(hy.transformer, SurfTeaCacheConfig(threshold=0.1, model="hunyuanvideo"))
    with pytest.raises(ValueError, match="num_inference_steps=N"):
        frames(hy, HY_CALL)
    remove_teacache(hy.transformer)
    ref = frames(hy, HY_CALL)
    apply_teacache(hy.transformer, SurfTeaCacheConfig(threshold=1e9, model="hunyuanvideo", num_inference_steps=8))
    out = frames(hy, HY_CALL)
    assert teacache_stats(hy.transformer)["call"]["cond"]["decisions"] == [True] + [False] * 6 + [True]
    assert not np.array_equal(out, ref)
    remove_teacache(hy.transformer)
    assert_equal(frames(hy, HY_CALL), ref)  # removed: the pipeline's own output again
    assert not any(getattr(m, "_diffusers_hook", None) and m._diffusers_hook.hooks for m in hy.transformer.modules())


def _meta_wan(**cfg):
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        return WanTransformer3DModel(**cfg)


def test_bad_coefficients_and_models(wan, hy):
    with pytest.raises(ValueError, match="for a WanTransformer3DModel, not this HunyuanVideoTransformer3DModel"):
        apply_teacache(hy.transformer, SurfTeaCacheConfig(model="wan2.1-t2v-14b"))
    with pytest.raises(ValueError, match="for a HunyuanVideoTransformer3DModel"):
        apply_teacache(wan.transformer, SurfTeaCacheConfig(model="hunyuanvideo"))
    with pytest.raises(ValueError, match="36-channel"):
        apply_teacache(wan.transformer, SurfTeaCacheConfig(model="wan2.1-i2v-14b-480p"))
    with pytest.raises(ValueError, match="16-channel"):
        apply_teacache(tiny_wan_i2v().transformer, SurfTeaCacheConfig(model="wan2.1-t2v-1.3b"))
    with pytest.raises(ValueError, match="no published TeaCache coefficients match"):
        apply_teacache(wan.transformer, SurfTeaCacheConfig())
    with pytest.raises(ValueError, match="does not exist"):
        apply_teacache(hy.transformer, SurfTeaCacheConfig(model="hunyuanvideo", indicator="temb"))
    with pytest.raises(ValueError, match="needs the indicator"):
        SurfTeaCacheConfig(coefficients=(1.0, 0.0))
    with pytest.raises(ValueError, match="unknown TeaCache model"):
        SurfTeaCacheConfig(model="wan2.2")
    # the 14B polynomial on a 1.3B-sized Wan (30 layers x 1536) names the right key
    small = _meta_wan(num_layers=30, num_attention_heads=12, attention_head_dim=128, ffn_dim=8960)
    with pytest.raises(ValueError, match="'wan2.1-t2v-1.3b'"):
        SurfTeaCacheConfig(model="wan2.1-t2v-14b").resolve(small)
    assert SurfTeaCacheConfig().resolve(small)[0] == "temb"  # recognised from its config


def test_two_caches_refused(wan):
    from diffusers import FirstBlockCacheConfig

    tr = wan.transformer
    tr.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    try:
        with pytest.raises(ValueError, match="already has a cache installed"):
            apply_teacache(tr, SurfTeaCacheConfig(threshold=0.1, model="wan2.1-t2v-1.3b"))
    finally:
        tr.disable_cache()
    apply_teacache(tr, SurfTeaCacheConfig(threshold=0.1, coefficients=(1.0, 0.0), indicator="temb"))
    tr.enable_cache(FirstBlockCacheConfig(threshold=0.05))  # diffusers does not see TeaCache
    try:
        surf_accel.patch(wan, STAGED)
        with pytest.raises(ValueError, match="more than one cache"):
            frames(wan, WAN_KW)
    finally:
        tr.disable_cache()
