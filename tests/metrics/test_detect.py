"""Detectors are near-perfect on ground-truth clips of the world at every resolution; similarity
metrics behave on known perturbations."""

import math

import numpy as np
import pytest
import torch

from surf_accel import metrics
from surf_accel.toyworld import world


def _videos(n, size, seed=0, frames=17):
    specs = world.sample_specs(n, seed)
    return specs, np.stack([world.to_numpy_video(s.render(size, num_frames=frames)) for s in specs])


@pytest.mark.parametrize("size", [32, 64, 128])
def test_detectors_on_ground_truth(size):
    specs, vids = _videos(64 if size < 128 else 32, size, seed=size)
    res = metrics.evaluate(vids, [s.prompt for s in specs])["summary"]
    assert res["colour_acc"] == 1.0
    assert res["direction_acc"] == 1.0
    assert res["shape_acc"] >= (0.95 if size == 32 else 1.0)
    assert res["presence"] == 1.0


@pytest.mark.parametrize("size", [32, 64])
def test_track_matches_truth(size):
    specs, vids = _videos(8, size, seed=11)
    for spec, v in zip(specs, vids):
        sig = metrics.detect_video(v)
        err = np.abs(sig.track - spec.track(17).numpy()).max()
        assert err < 0.5 / size + 1e-3  # within half a pixel
        assert sig.jitter < 1e-2
        speed = math.hypot(*sig.velocity)
        assert abs(speed - spec.speed) < 2e-3


def test_empty_and_static_videos():
    bg = np.broadcast_to(np.asarray(world.BACKGROUND, np.float32), (17, 32, 32, 3)).copy()
    sig = metrics.detect_video(bg + np.random.default_rng(0).normal(0, 0.02, bg.shape).astype(np.float32))
    assert sig.presence == 0 and sig.colour is None and sig.direction is None and sig.shape is None
    spec = world.ClipSpec("blue", "square", "left", 0.0, 0.5, 0.5)
    sig = metrics.detect_video(world.to_numpy_video(spec.render(64)))
    assert sig.direction is None and sig.colour == "blue" and sig.shape == "square"


def test_batch_and_tensor_inputs():
    specs, vids = _videos(2, 32)
    assert len(metrics.detect_batch(vids)) == 2
    assert metrics.detect_batch(vids[0])[0].colour == specs[0].colour
    assert metrics.detect_video(torch.from_numpy(vids[1])).colour == specs[1].colour
    assert metrics.detect_video((vids[1] * 255).astype(np.uint8)).colour == specs[1].colour
    with pytest.raises(ValueError):
        metrics.detect_video(vids)


def test_robust_to_mild_noise_and_blur():
    specs, vids = _videos(16, 64, seed=5)
    noisy = np.clip(vids + np.random.default_rng(1).normal(0, 0.05, vids.shape), 0, 1).astype(np.float32)
    t = torch.from_numpy(noisy).permute(0, 1, 4, 2, 3).reshape(-1, 3, 64, 64)
    blurred = torch.nn.functional.avg_pool2d(t, 3, 1, 1, count_include_pad=False)
    blurred = blurred.reshape(16, 17, 3, 64, 64).permute(0, 1, 3, 4, 2).numpy()
    res = metrics.evaluate(blurred, [s.prompt for s in specs])["summary"]
    assert res["colour_acc"] == 1.0 and res["direction_acc"] == 1.0 and res["shape_acc"] >= 0.9


def test_layout_comparison():
    specs, vids = _videos(4, 64, seed=2)
    same = metrics.compare_layout(list(vids), list(vids))
    assert same["track_distance"] == 0 and same["colour_agreement"] == 1
    _, lo = _videos(4, 32, seed=2)
    cross = metrics.compare_layout(list(vids), list(lo))  # same scenes at another resolution
    assert cross["track_distance"] < 0.02 and cross["direction_agreement"] == 1
    other = metrics.compare_layout(list(vids), list(vids[::-1]))
    assert other["track_distance"] > 0.05


def test_psnr_ssim_on_known_perturbations():
    _, vids = _videos(2, 32, seed=7, frames=5)
    a = vids[0]
    assert metrics.psnr(a, a) == math.inf and metrics.ssim(a, a) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    for sigma in (0.01, 0.05):
        b = a + rng.normal(0, sigma, a.shape).astype(np.float32)
        assert metrics.psnr(a, b) == pytest.approx(-20 * math.log10(sigma), abs=0.3)
    small = a + rng.normal(0, 0.01, a.shape).astype(np.float32)
    big = a + rng.normal(0, 0.1, a.shape).astype(np.float32)
    assert 1 > metrics.ssim(a, small) > metrics.ssim(a, big) > 0
    # A shifted object is less similar than a slightly noisy one.
    assert metrics.ssim(a, np.roll(a, 4, axis=2)) < metrics.ssim(a, small)
    # Comparing across resolutions needs resize=True.
    hi = world.to_numpy_video(world.sample_specs(2, 7)[0].render(64, num_frames=5))
    with pytest.raises(ValueError):
        metrics.psnr(a, hi)
    assert metrics.psnr(a, hi, resize=True) > 30
    sim = metrics.similarity(vids, vids + 0.01)
    assert sim["psnr"] == pytest.approx(40, abs=0.1)
