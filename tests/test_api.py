"""patch / unpatch / patched on tiny Wan pipelines."""

import numpy as np
import pytest

import surf_accel
from surf_accel import SurfConfig
from tests.tiny_pipelines import T2V_KW, gen, tiny_wan_t2v

SMALL = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=1)


@pytest.fixture(scope="module")
def pipe():
    p = tiny_wan_t2v("euler")
    yield p
    surf_accel.unpatch(p)


def test_exports():
    assert surf_accel.SurfConfig is SurfConfig
    assert callable(surf_accel.patch) and callable(surf_accel.unpatch) and callable(surf_accel.patched)


def test_patch_is_per_instance(pipe):
    from diffusers import WanPipeline

    call_before = WanPipeline.__call__
    other = tiny_wan_t2v("euler")
    out = surf_accel.patch(pipe, SMALL)
    try:
        assert out is pipe
        assert isinstance(pipe, WanPipeline) and type(pipe).__name__ == "WanPipeline"
        assert WanPipeline.__call__ is call_before  # the diffusers class is untouched
        assert type(other) is WanPipeline and not surf_accel.is_patched(other)
        assert surf_accel.api.get_config(pipe) == SMALL
    finally:
        surf_accel.unpatch(pipe)
    assert type(pipe) is WanPipeline and not surf_accel.is_patched(pipe)


def test_idempotent_and_refuses_other_config(pipe):
    surf_accel.patch(pipe, SMALL)
    try:
        assert surf_accel.patch(pipe, SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2,
                                                 refine_steps=1)) is pipe
        with pytest.raises(ValueError, match="unpatch"):
            surf_accel.patch(pipe, SMALL.replace(refine_steps=2))
    finally:
        surf_accel.unpatch(pipe)
    surf_accel.patch(pipe, SMALL.replace(refine_steps=2))  # fine after unpatch
    surf_accel.unpatch(pipe)
    surf_accel.unpatch(pipe)  # no-op when not patched


def test_preset_name_and_default(pipe):
    with surf_accel.patched(pipe, "fast"):
        assert surf_accel.api.get_config(pipe) == SurfConfig.preset("fast")
    with surf_accel.patched(pipe):
        assert surf_accel.api.get_config(pipe) == SurfConfig.preset("paper")
    with pytest.raises(TypeError, match="SurfConfig"):
        surf_accel.patch(pipe, {"refine_steps": 1})
    with pytest.raises(ValueError, match="known presets"):
        surf_accel.patch(pipe, "warp")


def test_unpatch_parity_bit_identical(pipe):
    ref = pipe(generator=gen(0), **T2V_KW).frames
    with surf_accel.patched(pipe, SMALL):
        surfed = pipe(generator=gen(0), **T2V_KW).frames
    after = pipe(generator=gen(0), **T2V_KW).frames
    np.testing.assert_array_equal(after, ref)
    assert np.abs(surfed - ref).max() > 0  # SURF did run


def test_context_manager_restores_on_error(pipe):
    from diffusers import WanPipeline

    with pytest.raises(RuntimeError):
        with surf_accel.patched(pipe, SMALL):
            assert surf_accel.is_patched(pipe)
            raise RuntimeError("boom")
    assert type(pipe) is WanPipeline


def test_unsupported_pipeline_type_error():
    class NotAPipeline:
        pass

    with pytest.raises(TypeError, match="WanPipeline, WanImageToVideoPipeline"):
        surf_accel.patch(NotAPipeline())


def test_unsupported_scheduler_type_error():
    from diffusers import DDIMScheduler, UniPCMultistepScheduler

    p = tiny_wan_t2v("euler")
    p.scheduler = DDIMScheduler()
    with pytest.raises(TypeError, match="supported schedulers"):
        surf_accel.patch(p)
    p.scheduler = UniPCMultistepScheduler()  # not configured for flow matching
    with pytest.raises(TypeError, match="flow matching"):
        surf_accel.patch(p)
    assert not surf_accel.is_patched(p)


def test_wan22_refused():
    p = tiny_wan_t2v("euler")
    p.register_to_config(boundary_ratio=0.9)
    with pytest.raises(TypeError, match="Wan2.2"):
        surf_accel.patch(p)


def test_signature_is_the_pipelines(pipe):
    import inspect

    from diffusers import WanPipeline

    with surf_accel.patched(pipe, SMALL):
        sig = inspect.signature(pipe.__call__)
        assert sig == inspect.signature(WanPipeline.__call__.__get__(pipe))
        assert "num_inference_steps" in sig.parameters and "generator" in sig.parameters
        assert "SURF" in pipe.__call__.__doc__


def offload_recorder(monkeypatch, pipe, names):
    """The component whose model-offload hook ran, per call of accelerate's ``CpuOffload.pre_forward``
    (on the CPU the hook moves nothing, but it still runs: diffusers calls it for forward and for the
    VAE's ``encode``/``decode``)."""
    from accelerate.hooks import CpuOffload

    seen = []
    original = CpuOffload.pre_forward

    def pre_forward(self, module, *args, **kwargs):
        seen.extend(n for n in names if getattr(pipe, n) is module)
        return original(self, module, *args, **kwargs)

    monkeypatch.setattr(CpuOffload, "pre_forward", pre_forward)
    return seen


@pytest.mark.parametrize("handoff, expected", [
    # text, transformer (4 preview steps x 2 branches), VAE decode of the preview, VAE encode, transformer
    # (2 refine steps x 2), final VAE decode: every component SURF calls goes through its offload hook
    ("pixel", ["text_encoder"] * 2 + ["transformer"] * 8 + ["vae"] * 2 + ["transformer"] * 4 + ["vae"]),
    ("latent", ["text_encoder"] * 2 + ["transformer"] * 12 + ["vae"]),
])
def test_model_cpu_offload_hooks_run_for_every_component_in_order(monkeypatch, handoff, expected):
    p = tiny_wan_t2v("euler")
    cfg = SMALL.replace(handoff=handoff, refine_steps=2)
    with surf_accel.patched(p, cfg):
        ref = p(generator=gen(0), **T2V_KW).frames
    p.enable_model_cpu_offload(device="cpu")
    seen = offload_recorder(monkeypatch, p, ("text_encoder", "transformer", "vae"))
    with surf_accel.patched(p, cfg):
        out = p(generator=gen(0), **T2V_KW).frames
        assert seen == expected
        seen.clear()
        again = p(generator=gen(0), **T2V_KW).frames  # hooks re-armed by maybe_free_model_hooks
        assert seen == expected
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(again, ref)


def test_identity_survives_model_cpu_offload(monkeypatch):
    p = tiny_wan_t2v("euler")
    kw = {**T2V_KW, "height": 32, "width": 32}
    ref = p(generator=gen(0), **kw).frames
    surf_accel.patch(p, SurfConfig.identity())
    p.enable_model_cpu_offload(device="cpu")
    assert surf_accel.is_patched(p)
    seen = offload_recorder(monkeypatch, p, ("text_encoder", "transformer", "vae"))
    out = p(generator=gen(0), **kw).frames
    assert seen == ["text_encoder"] * 2 + ["transformer"] * 8 + ["vae"]
    np.testing.assert_array_equal(out, ref)
    surf_accel.unpatch(p)


@pytest.mark.gpu
@pytest.mark.parametrize("handoff", ["pixel", "latent"])
def test_model_cpu_offload_on_gpu(handoff):
    """On a GPU the hooks move each component to the device when SURF calls it (the VAE at the handoff
    too) and back after the call; the output equals SURF without offload."""
    import torch

    cfg = SMALL.replace(handoff=handoff, refine_steps=2)
    p = tiny_wan_t2v("euler").to("cuda")
    with surf_accel.patched(p, cfg):
        ref = p(generator=torch.Generator("cuda").manual_seed(0), **T2V_KW).frames
    p = tiny_wan_t2v("euler")
    p.enable_model_cpu_offload()
    with surf_accel.patched(p, cfg):
        out = p(generator=torch.Generator("cuda").manual_seed(0), **T2V_KW).frames
    np.testing.assert_allclose(out, ref, atol=1e-5)
    assert all(next(getattr(p, n).parameters()).device.type == "cpu" for n in ("text_encoder", "transformer", "vae"))


def test_cost_warning_when_surf_would_cost_more(caplog):
    """A 2-step call at 32 px cannot pay for its extra stages: SURF runs what was
    asked but says so at WARNING; a latent handoff from 64 to 128 px over 12 steps saves work and says
    nothing (the tiny model's FLOPs, with its VAE measured)."""
    import logging

    p = tiny_wan_t2v("euler")
    follow = dict(preview_steps=None, switch_step=None, refine_steps=None)
    with caplog.at_level(logging.WARNING, logger="surf_accel"):
        with surf_accel.patched(p, SMALL.replace(**follow, optimal_size=(32, 32))):
            p(generator=gen(0), **{**T2V_KW, "num_inference_steps": 2, "height": 32, "width": 32})
        assert any("counts more FLOPs" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        caplog.clear()
        with surf_accel.patched(p, SMALL.replace(**follow, optimal_size=(64, 64), handoff="latent")):
            p(generator=gen(0), **{**T2V_KW, "num_inference_steps": 12, "height": 128, "width": 128})
        assert not any("counts more FLOPs" in r.getMessage() for r in caplog.records)


def test_window_refine_uses_and_removes_window_attention(pipe):
    try:
        import surf_accel.integrations.window_processors as wp
    except ImportError:
        with pytest.raises(NotImplementedError, match="window"):
            surf_accel.patch(pipe, SMALL.replace(window=(1, 2, 2)))
        assert not surf_accel.is_patched(pipe)
        return
    kw = T2V_KW  # 32x32: the refine stage's grid is (2, 2, 2) tokens
    procs = {n: type(p) for n, p in pipe.transformer.attn_processors.items()}
    with surf_accel.patched(pipe, SMALL):
        dense = pipe(generator=gen(0), **kw).frames
    with surf_accel.patched(pipe, SMALL.replace(window=(1, 1, 1))):
        windowed = pipe(generator=gen(0), **kw).frames
        whole = None
    with surf_accel.patched(pipe, SMALL.replace(window=(8, 8, 8))):  # windows >= the grid: dense attention
        whole = pipe(generator=gen(0), **kw).frames
    assert {n: type(p) for n, p in pipe.transformer.attn_processors.items()} == procs  # removed after the stage
    assert not hasattr(pipe.transformer, wp.STATE_ATTR) or getattr(pipe.transformer, wp.STATE_ATTR) is None
    assert np.abs(windowed - dense).max() > 0
    np.testing.assert_allclose(whole, dense, atol=1e-4)


def test_plan_for(pipe):
    plan = surf_accel.api.plan_for(pipe, height=64, width=64, num_frames=5, num_inference_steps=4, config=SMALL)
    assert [s.name for s in plan.stages] == ["preview", "preview_low", "refine"]
