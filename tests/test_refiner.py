"""The trained-refiner slot (save/load, wrong architecture refused) and the refine handoff."""

import json
import os

import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from surf_accel.refiner import Refiner, handoff, resize_latent
from tests.tiny_pipelines import T2V_KW, gen, tiny_transformer, tiny_wan_t2v

CFG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
           text_dim=32, freq_dim=32, ffn_dim=16, num_layers=1, cross_attn_norm=True,
           qk_norm="rms_norm_across_heads", rope_max_seq_len=64)
SMALL = SurfConfig(optimal_size=(32, 32), preview_steps=4, switch_step=2, refine_steps=2)


def test_save_load_roundtrip(tmp_path):
    r = Refiner.random(CFG, num_steps=7)
    r.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    mode = {f: os.stat(tmp_path / f).st_mode & 0o777 for f in ("config.json", "diffusion_pytorch_model.safetensors")}
    assert mode["diffusion_pytorch_model.safetensors"] == mode["config.json"]  # not safetensors' 0600
    r2 = Refiner.from_pretrained(tmp_path)
    assert r2.num_steps == 7 and r2.architecture == "WanTransformer3DModel"
    for (k, a), (k2, b) in zip(r.transformer.state_dict().items(), r2.transformer.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def _edit_config(folder, fn):
    path = os.path.join(folder, "config.json")
    cfg = json.load(open(path))
    fn(cfg)
    json.dump(cfg, open(path, "w"))


def test_wrong_architecture_refused(tmp_path):
    Refiner.random(CFG).save_pretrained(tmp_path)
    _edit_config(tmp_path, lambda c: c.update(architecture="HunyuanVideoTransformer3DModel"))
    with pytest.raises(ValueError, match="architecture"):
        Refiner.from_pretrained(tmp_path)


def test_mismatching_weights_refused(tmp_path):
    Refiner.random(CFG).save_pretrained(tmp_path)
    _edit_config(tmp_path, lambda c: c["transformer_config"].update(num_layers=2, ffn_dim=24))
    with pytest.raises(ValueError, match="missing|other shapes"):
        Refiner.from_pretrained(tmp_path)


def test_not_a_refiner_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Refiner.from_pretrained(tmp_path)
    Refiner.random(CFG).save_pretrained(tmp_path)
    _edit_config(tmp_path, lambda c: c.update(format="something-else"))
    with pytest.raises(ValueError, match="not a surf_accel refiner"):
        Refiner.from_pretrained(tmp_path)


def test_refiner_wraps_only_supported():
    with pytest.raises(TypeError, match="WanTransformer3DModel"):
        Refiner(torch.nn.Linear(2, 2))


# (config changes, the call's steps, the refiner's timesteps): an explicit refine_steps wins; unset, the
# refiner's own saved num_steps (3) decides, whatever the call's steps
@pytest.mark.parametrize("changes, steps, timesteps", [
    ({}, 4, [1000.0, 500.0]),
    (dict(refine_steps=None, preview_steps=None), 4, [1000.0, 2000 / 3, 1000 / 3]),
    (dict(refine_steps=None, preview_steps=None), 8, [1000.0, 2000 / 3, 1000 / 3]),
])
def test_trained_refiner_runs_from_s1_for_its_steps(tmp_path, changes, steps, timesteps):
    Refiner.random(CFG, num_steps=3).save_pretrained(tmp_path)
    r = Refiner.from_pretrained(tmp_path)
    p = tiny_wan_t2v("euler")
    seen = []
    hook = r.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(float(kw["timestep"][0])),
                                                   with_kwargs=True)
    cfg = SMALL.replace(**changes)
    with surf_accel.patched(p, cfg, refiner=r):
        plan = surf_accel.api.plan_for(p, height=32, width=32, num_frames=5, num_inference_steps=steps)
        out = p(generator=gen(0), **{**T2V_KW, "num_inference_steps": steps}).frames
    hook.remove()
    assert plan.stages[-1].model == "trained_refiner"
    assert out.shape == (1, 5, 32, 32, 3)
    assert seen == pytest.approx(timesteps, rel=1e-6)  # from s = 1 down the straight path, no noise


def test_incompatible_refiner_refused():
    p = tiny_wan_t2v("euler")
    bad = Refiner.random({**CFG, "text_dim": 24})
    with pytest.raises(ValueError, match="text_dim"):
        surf_accel.patch(p, SMALL, refiner=bad)
    with pytest.raises(ValueError, match="in_channels"):
        surf_accel.patch(p, SMALL, refiner=tiny_transformer(in_channels=36, image_dim=4))
    with pytest.raises(TypeError, match="Refiner"):
        surf_accel.patch(p, SMALL, refiner=torch.nn.Linear(2, 2))
    assert not surf_accel.is_patched(p)


@pytest.mark.parametrize("changes, warned", [
    ({}, []),
    (dict(handoff="pixel"), ["handoff"]),
    (dict(latent_resize="nearest"), ["latent_resize"]),
    (dict(window=None), ["window"]),
    (dict(window=(1, 4, 4), latent_resize="nearest"), ["latent_resize", "window"]),
])
def test_patch_warns_where_the_config_differs_from_the_refiners_training(caplog, changes, warned):
    meta = {"inference": {"handoff": "latent", "latent_resize": "bilinear", "window": [1, 2, 2]}}
    ref = Refiner(Refiner.random(CFG).transformer, num_steps=2, metadata=meta)
    cfg = SMALL.replace(**{"handoff": "latent", "window": (1, 2, 2), **changes})
    with caplog.at_level("WARNING", logger="surf_accel"):
        surf_accel.patch(tiny_wan_t2v("euler"), cfg, refiner=ref)
    got = sorted(k for k in ("handoff", "latent_resize", "window") for r in caplog.records
                 if f"trained with {k}=" in r.getMessage())
    assert got == warned


def test_refiner_transformer_is_used():
    p = tiny_wan_t2v("euler")
    other = tiny_transformer(seed=1)
    calls = []
    hook = other.register_forward_pre_hook(lambda m, a: calls.append(1))
    with surf_accel.patched(p, SMALL, refiner=other):
        p(generator=gen(0), **T2V_KW)
    hook.remove()
    assert len(calls) == 2 * 2  # refine_steps x (cond + uncond)


class _FakeAdapter:
    def decode(self, pipe, z):
        return z[:, :3].repeat_interleave(8, -1).repeat_interleave(8, -2).clamp(-1, 1)

    def encode(self, pipe, video):
        z = torch.nn.functional.avg_pool3d(video, (1, 8, 8))
        return torch.cat([z] * 6, 1)[:, :16]


def test_latent_handoff_fused_equals_resize_then_mix():
    from surf_accel.planner import Stage

    stage = Stage("refine", 64, 64, (2, 8, 8), (0.4, 0.0), 3.0, "base", "handoff", 0)
    z = torch.randn(1, 16, 2, 4, 4, generator=gen(0))
    noise = torch.randn(1, 16, 2, 8, 8, generator=gen(1))
    for mode in ("nearest", "bilinear"):
        cfg = SurfConfig(handoff="latent", latent_resize=mode)
        out = handoff(None, _FakeAdapter(), z, stage, cfg, noise, 0.4)
        want = 0.6 * resize_latent(z, (8, 8), mode) + 0.4 * noise
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        # the trained refiner's start: z_lr itself
        torch.testing.assert_close(handoff(None, _FakeAdapter(), z, stage, cfg, None, 1.0), resize_latent(z, (8, 8), mode))


def test_pixel_handoff_shape():
    from surf_accel.planner import Stage

    stage = Stage("refine", 64, 64, (2, 8, 8), (0.4, 0.0), 3.0, "base", "handoff", 0)
    z = torch.randn(1, 16, 2, 4, 4, generator=gen(0))
    out = handoff(None, _FakeAdapter(), z, stage, SurfConfig(), None, 1.0)
    assert out.shape == (1, 16, 2, 8, 8)
