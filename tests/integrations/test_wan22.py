"""Wan2.2 through the Wan adapter: A14B two-expert T2V/I2V and TI2V-5B (expand_timesteps) T2V/I2V.

Identity against the unpatched pipeline (bit for bit, fp32 and bf16), patch/unpatch, per-expert cache
resets, the TI2V geometry read from the pipeline, interrupts, refusals, cost-model specs and the CLI.
SURF runs against the hand replay are in tests/test_surf_replay_wan22.py.
"""

import math
import os

import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from tests.tiny_pipelines import (T2V_KW, gen, i2v_kwargs, tiny_transformer, tiny_wan22_a14b, tiny_wan22_ti2v,
                                  tiny_wan_t2v)

SMALL = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2)
VARIANTS = {
    # (pipeline factory, call arguments)
    "a14b-t2v-unipc": (lambda: tiny_wan22_a14b(kind="unipc"), dict(T2V_KW, guidance_scale_2=2.0)),
    "a14b-i2v-euler": (lambda: tiny_wan22_a14b(i2v=True), i2v_kwargs(guidance_scale_2=2.5)),
    "ti2v-t2v-euler": (lambda: tiny_wan22_ti2v(), dict(T2V_KW, height=64, width=64)),
    "ti2v-i2v-unipc": (lambda: tiny_wan22_ti2v(i2v=True, kind="unipc"), i2v_kwargs(height=64, width=64)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_identity_bit_exact_and_unpatch(variant, dtype):
    make, kw = VARIANTS[variant]
    pipe = make().to(dtype)
    kw = {k: (v.to(dtype) if torch.is_tensor(v) else v) for k, v in kw.items()}
    kw["output_type"] = "latent"
    ref = pipe(generator=gen(0), **kw).frames
    cls = type(pipe)
    surf_accel.patch(pipe, SurfConfig.identity())
    out = pipe(generator=gen(0), **kw).frames
    surf_accel.unpatch(pipe)
    assert type(pipe) is cls
    again = pipe(generator=gen(0), **kw).frames
    assert out.dtype == ref.dtype
    assert torch.equal(out, ref), f"max |identity - unpatched| = {(out.float() - ref.float()).abs().max():.3g}"
    assert torch.equal(again, ref)
    if "a14b" in variant:  # the pipeline's own state, as its __call__ leaves it
        assert pipe._guidance_scale_2 == kw["guidance_scale_2"]


def test_identity_decoded_frames_ti2v_i2v():
    """The 48-channel VAE's own statistics in the decode, and the first frame put back before it."""
    pipe = tiny_wan22_ti2v(i2v=True)
    kw = i2v_kwargs(height=64, width=64)
    ref = pipe(generator=gen(0), **kw).frames
    with surf_accel.patched(pipe, SurfConfig.identity()):
        out = pipe(generator=gen(0), **kw).frames
    assert (out == ref).all()


def test_guidance_2_defaults_to_guidance():
    """As the pipeline: no guidance_scale_2 means guidance_scale for the low-noise expert too."""
    pipe = tiny_wan22_a14b()
    kw = dict(T2V_KW, output_type="latent")
    with surf_accel.patched(pipe, SMALL):
        a = pipe(generator=gen(0), **kw).frames
        b = pipe(generator=gen(0), guidance_scale_2=kw["guidance_scale"], **kw).frames
        c = pipe(generator=gen(0), guidance_scale_2=1.5, **kw).frames
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


def test_each_expert_gets_its_own_stage_resets(monkeypatch):
    """Cache state stays per expert and each gets the resets of every stage it can run in (the stage
    protocol's, at each stage's start and end): both in the preview stages, only the low-noise expert
    in the default refine."""
    from surf_accel import stages

    pipe = tiny_wan22_a14b()
    names = {id(pipe.transformer): "high", id(pipe.transformer_2): "low"}
    resets = {"high": 0, "low": 0}
    real = stages.reset_stateful_hooks

    def counting(model):
        resets[names[id(model)]] += 1
        real(model)

    monkeypatch.setattr(stages, "reset_stateful_hooks", counting)
    with surf_accel.patched(pipe, SMALL):
        pipe(generator=gen(0), **dict(T2V_KW, height=64, width=64, output_type="latent"))
    # start + end of preview, preview_low (both experts), refine (low only)
    assert resets == {"high": 4, "low": 6}
    resets.update(high=0, low=0)
    with surf_accel.patched(pipe, SMALL.replace(refine_expert="route")):
        pipe(generator=gen(0), **dict(T2V_KW, height=64, width=64, output_type="latent"))
    assert resets == {"high": 6, "low": 6}


def test_ti2v_geometry_from_the_pipeline():
    """16x VAE, 48 latent channels, the 720p optimal size (1280x704) and its 64-pixel plan grid."""
    from surf_accel.integrations.wan import WanAdapter

    pipe = tiny_wan22_ti2v()
    spec = WanAdapter().family_spec(pipe)
    assert (spec.vae_scale_spatial, spec.vae_scale_temporal, spec.pixel_grid) == (16, 4, 32)
    assert spec.optimal_area == 704 * 1280 and spec.name == "wan2.2-ti2v"
    assert WanAdapter().video_fps(pipe) == 24 and WanAdapter().video_fps(tiny_wan22_a14b()) == 16
    plan = surf_accel.api.plan_for(pipe, height=1088, width=1920, num_frames=121, num_inference_steps=50,
                                   config=SurfConfig.preset("paper"))
    # by hand: 901120 px at 1920/1088 -> 714.6 x 1261.0, on the 64-pixel grid (32 x the factor 2) 704 x 1280
    assert [(s.name, s.height, s.width) for s in plan.stages] == [
        ("preview", 704, 1280), ("preview_low", 352, 640), ("refine", 1088, 1920)]
    assert plan.stages[0].latent_size == (31, 44, 80)  # (121 - 1) / 4 + 1 frames, 704 / 16, 1280 / 16
    # at its native 720p the request is the optimal size: the preview runs there, then switches
    plan = surf_accel.api.plan_for(pipe, height=704, width=1280, num_frames=121, num_inference_steps=50,
                                   config=SurfConfig.preset("paper"))
    assert [(s.height, s.width) for s in plan.stages] == [(704, 1280), (352, 640), (704, 1280)]
    # latents with the pipeline's own channel count
    with surf_accel.patched(pipe, SurfConfig(optimal_size=(64, 64), preview_steps=2, switch_step=1,
                                             refine_steps=1)):
        z = pipe(generator=gen(0), **dict(T2V_KW, height=128, width=128, output_type="latent")).frames
    assert z.shape == (1, 48, 2, 8, 8)


def test_ti2v_i2v_interrupt_returns_request_size_with_the_first_frame():
    pipe = tiny_wan22_ti2v(i2v=True)

    def stop(p, i, t, kw):
        p._interrupt = True
        return {}

    kw = i2v_kwargs(height=128, width=128, output_type="latent", callback_on_step_end=stop)
    with surf_accel.patched(pipe, SurfConfig(optimal_size=(64, 64), preview_steps=4, switch_step=2,
                                             refine_steps=2)):
        z = pipe(generator=gen(0), **kw).frames
    assert z.shape == (1, 48, 2, 8, 8)
    image = pipe.video_processor.preprocess(kw["image"], height=128, width=128).float()
    _, cond, _ = pipe.prepare_latents(image, 1, 48, 128, 128, 5, torch.float32, torch.device("cpu"), None,
                                      torch.zeros(1, 48, 2, 8, 8))
    torch.testing.assert_close(z[:, :, :1], cond)


# ---------------------------------------------------------------------------- refusals
def test_missing_expert_refused():
    pipe = tiny_wan22_a14b()
    pipe.transformer_2 = None
    with pytest.raises(TypeError, match="no transformer_2 .*load the pipeline with both experts"):
        surf_accel.patch(pipe)
    pipe = tiny_wan22_a14b()
    pipe.transformer = None
    with pytest.raises(TypeError, match="no transformer \\(high-noise expert\\)"):
        surf_accel.patch(pipe)
    assert not surf_accel.is_patched(pipe)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1, True])
def test_boundary_outside_0_1_refused(ratio):
    pipe = tiny_wan22_a14b()
    pipe.register_to_config(boundary_ratio=ratio)
    with pytest.raises(TypeError, match=r"boundary_ratio must be in \(0, 1\)"):
        surf_accel.patch(pipe)


def test_experts_of_different_interfaces_refused():
    pipe = tiny_wan22_a14b()
    pipe.transformer_2 = tiny_transformer(in_channels=36, seed=1)
    with pytest.raises(TypeError, match="experts .* differ"):
        surf_accel.patch(pipe)


def test_ti2v_refusals():
    from surf_accel import Refiner

    pipe = tiny_wan22_ti2v()
    with pytest.raises(TypeError, match="trained surf_accel.Refiner .*refiner=None"):
        surf_accel.patch(pipe, refiner=Refiner(tiny_transformer(in_channels=48, out_channels=48)))
    pipe.transformer.register_to_config(patch_size=(1, 4, 4))
    with pytest.raises(TypeError, match="patch \\(1, 2, 2\\) only"):
        surf_accel.patch(pipe)


def test_bad_refine_expert_and_guidance_2_without_experts():
    with pytest.raises(ValueError, match="refine_expert must be one of"):
        SurfConfig(refine_expert="mid")
    pipe = tiny_wan_t2v()
    with surf_accel.patched(pipe, SMALL), pytest.raises(ValueError, match="guidance_scale_2"):
        pipe(generator=gen(0), guidance_scale_2=2.0, **T2V_KW)


# ---------------------------------------------------------------------------- cost model
def test_cost_specs_one_expert_per_step():
    from surf_accel.catalogue import MODELS, estimate

    a14b, wan14 = MODELS["wan2.2-a14b"], MODELS["wan2.1-14b"]
    assert a14b.params == 40 * (8 * 5120 ** 2 + 2 * 5120 * 13824)  # ~14.0B per expert
    # one expert per step: the same FLOPs as a single 14B model on the same plan, not twice that
    e22 = estimate("wan2.2-a14b", 720, 1280, 81, steps=40)
    e21 = estimate("wan2.1-14b", 720, 1280, 81, steps=40)
    assert e22.baseline_total == e21.baseline_total and e22.surf_total == e21.surf_total
    ti2v = MODELS["wan2.2-ti2v-5b"]
    assert (ti2v.dim, ti2v.ffn_dim, ti2v.num_layers, ti2v.in_channels) == (3072, 14336, 30, 48)
    assert 4.8e9 < ti2v.params < 5.0e9
    est = estimate("wan2.2-ti2v-5b", 704, 1280, 121)
    # 16x VAE, patch 2: (121 - 1) / 4 + 1 = 31 frames x 22 x 40 tokens at 1280x704
    assert est.baseline[0].tokens == 31 * 22 * 40
    assert [s.size for s in est.surf] == [(704, 1280), (352, 640), (704, 1280)]
    assert est.speedup > 1 and math.isfinite(est.speedup)


# ---------------------------------------------------------------------------- CLI and training
@pytest.fixture(scope="module")
def a14b_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan22") / "a14b"
    tiny_wan22_a14b(kind="unipc").save_pretrained(folder)
    return folder


def test_cli_generate_two_expert_folder(a14b_folder, tmp_path, capsys):
    from surf_accel import cli

    out = tmp_path / "v.mp4"
    rc = cli.main(["generate", str(a14b_folder), "--prompt", "a red circle", "--height", "64", "--width", "64",
                   "--frames", "5", "--steps", "4", "--guidance", "4", "--guidance-2", "2", "--max-sequence-length",
                   "16", "--dtype", "float32", "--device", "cpu", "--output", str(out), "--optimal-size", "32", "32",
                   "--preview-steps", "4", "--switch-step", "2", "--refine-steps", "1", "--refine-expert", "high"])
    assert rc == 0 and out.exists() and os.path.getsize(out) > 0
    assert "preview_low" in capsys.readouterr().err  # the plan it ran
    args = cli.build_parser().parse_args(["estimate", "--model", "wan2.2-a14b", "--height", "720", "--width", "1280",
                                          "--refine-expert", "route"])
    assert cli._config_from(args, "paper").refine_expert == "route"


def test_refiner_training_refuses_wan22_base(a14b_folder):
    from surf_accel.training.model import load_base_pipeline

    with pytest.raises(TypeError, match="Wan2.1 WanPipeline"):
        load_base_pipeline(str(a14b_folder))
