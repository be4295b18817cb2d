"""Pairs are made as inference makes z_lr; degradations; the video-folder data source."""

import numpy as np
import pytest
import torch

import surf_accel
from surf_accel import SurfConfig
from surf_accel.integrations.wan import WanAdapter
from surf_accel.refiner import Refiner
from surf_accel.training import pairs as P
from surf_accel.training.config import PairsConfig
from surf_accel.training.data import DataError, video_source


@pytest.fixture(scope="module")
def toy_pipe():
    from surf_accel.toyworld import load_pipeline

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("handoff", ["latent", "pixel"])
def test_pair_z_lr_is_inference_z_lr(toy_pipe, monkeypatch, handoff):
    """The runner's z_lr (what a trained refiner's first call reads) equals pairs.z_lr_from_preview
    of the same preview latent."""
    import surf_accel.refiner as refiner_mod

    previews = []
    real = refiner_mod.handoff
    monkeypatch.setattr(refiner_mod, "handoff", lambda pipe, adapter, preview, *a: previews.append(preview.clone())
                        or real(pipe, adapter, preview, *a))
    ref = Refiner.random(dict(toy_pipe.transformer.config) | {"num_layers": 1}, num_steps=2)
    seen = []
    hook = ref.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].clone()),
                                                     with_kwargs=True)
    cfg = SurfConfig(optimal_size=(64, 64), preview_steps=4, switch_step=2, handoff=handoff)
    with surf_accel.patched(toy_pipe, cfg, refiner=ref):
        toy_pipe(prompt="a red circle moving left", height=128, width=128, num_frames=5, num_inference_steps=4,
                 guidance_scale=1.0, output_type="latent", generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert len(previews) == 1 and previews[0].shape[-2:] == (8, 8)  # the 32 px preview latent
    stage = P.target_stage(toy_pipe, 128, 128, 5)
    mine = P.z_lr_from_preview(toy_pipe, WanAdapter(), previews[0], stage, PairsConfig(handoff=handoff))
    assert mine.shape == seen[0].shape == (1, 8, 2, 32, 32)
    assert torch.equal(mine, seen[0].float())


def test_make_pairs_is_the_documented_recipe(toy_pipe):
    """Without degradations: z_hr = encode(clip), z_lr = handoff(encode(area-downsampled clip)), each clip
    encoded alone."""
    from surf_accel.toyworld.world import render_batch, sample_specs

    clips = render_batch(sample_specs(2, seed=3, num_frames=5), 64, num_frames=5)
    cfg = PairsConfig(degrade_prob=0.0, handoff="latent")
    out = P.make_pairs(toy_pipe, WanAdapter(), clips, cfg, seed=0)
    a = WanAdapter()
    assert torch.equal(out["z_hr"], torch.cat([a.encode(toy_pipe, clips[i:i + 1]) for i in range(2)]))
    prev = a.encode(toy_pipe, torch.nn.functional.interpolate(clips.permute(0, 2, 1, 3, 4).flatten(0, 1), size=(32, 32),
                                                              mode="area").unflatten(0, (2, 5)).permute(0, 2, 1, 3, 4))
    want = P.z_lr_from_preview(toy_pipe, a, prev, P.target_stage(toy_pipe, 64, 64, 5), cfg)
    assert torch.allclose(out["z_lr"], want, atol=1e-6)
    assert (out["degradation"] == 0).all()


def test_degradations():
    g = torch.Generator().manual_seed(0)
    clip = torch.rand(3, 5, 32, 32, generator=g) * 2 - 1
    blurred = P.gaussian_blur(clip[None], 1.0)[0]
    assert blurred.std() < clip.std() * 0.6 and abs(blurred.mean() - clip.mean()) < 0.02
    smooth = P.gaussian_blur(torch.zeros(1, 3, 5, 16, 16) + 0.3, 2.0)
    assert torch.allclose(smooth, torch.full_like(smooth, 0.3), atol=1e-6)  # replicate padding keeps flat fields
    flat = torch.zeros(3, 5, 32, 32)
    flat[:, :, 8:24, 8:24] = 0.8
    for f, lvl in ((P.jpeg_roundtrip, 30), (P.h264_roundtrip, 35)):
        out = f(flat, lvl)
        assert out.shape == flat.shape
        err = (out - flat).abs().mean().item()
        assert 0 < err < 0.1, (f.__name__, err)  # lossy but close
    d = P.Degradation(0.5, 0.02, "jpeg", 50)
    a = P.degrade(clip, d, torch.Generator().manual_seed(1))
    b = P.degrade(clip, d, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, clip)


def _write_mp4(path, frames):
    import imageio.v2 as imageio

    w = imageio.get_writer(str(path), fps=8, codec="libx264", quality=9, macro_block_size=1)
    for f in frames:
        w.append_data(f)
    w.close()


def test_video_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    base = np.zeros((9, 48, 80, 3), dtype=np.uint8)
    base[:, 16:32, 30:50] = (200, 40, 40)
    _write_mp4(tmp_path / "a.mp4", base)
    _write_mp4(tmp_path / "b.mp4", rng.integers(0, 255, (3, 48, 80, 3), dtype=np.uint8))  # too short
    (tmp_path / "a.txt").write_text("a red square\n")
    (tmp_path / "captions.json").write_text('{"b.mp4": "noise"}')
    src = video_source(tmp_path, 32, 32, 5)
    assert len(src) == 1 and src.captions == ["a red square"]
    clip = src[0].video
    assert clip.shape == (3, 5, 32, 32) and clip.min() >= -1 and clip.max() <= 1
    # 48x80 scaled to 32x53 then centre-cropped: the red square stays in the middle
    assert clip[0, 0, 16, 16] > 0.3 and clip[1, 0, 16, 16] < -0.3
    (tmp_path / "c.mp4").write_bytes((tmp_path / "a.mp4").read_bytes())
    with pytest.raises(DataError, match="no caption.*c.mp4"):
        video_source(tmp_path, 32, 32, 5)
    with pytest.raises(DataError, match="does not exist"):
        video_source(tmp_path / "nope", 32, 32, 5)
