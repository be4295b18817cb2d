"""`surf-accel demo` on the shipped toy pipeline (few steps, so it runs in seconds)."""

import re

import numpy as np
import pytest

from surf_accel.cli import main as cli_main
from surf_accel.toyworld import NUM_FRAMES, TARGET_SIZE, pipeline_available
from surf_accel.bench.demo import check_prompt, compare_image


@pytest.mark.skipif(not pipeline_available(), reason="toy pipeline not shipped")
@pytest.mark.parametrize("flag, refiner", [([], "the trained toy refiner (10 steps"),
                                           (["--training-free"], "training-free")])
def test_demo_writes_videos_image_and_speedup(tmp_path, capsys, flag, refiner):
    import imageio.v3 as iio

    assert cli_main(["demo", "--out", str(tmp_path), "--steps", "4", "--prompt", "a blue square moving down",
                     *flag]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^refiner: " + re.escape(refiner), out, re.M)
    base_s = float(re.search(r"^baseline: ([0-9.]+) s$", out, re.M).group(1))
    surf_s = float(re.search(r"^SURF: +([0-9.]+) s$", out, re.M).group(1))
    speedup = float(re.search(r"^speedup: ([0-9.]+)x$", out, re.M).group(1))
    assert speedup == pytest.approx(base_s / surf_s, rel=0.02)  # the printed times are rounded to 10 ms
    assert re.search(r"^baseline: colour \w+ \((ok|WRONG)\), shape", out, re.M)
    assert re.search(r"^ +SURF: colour \w+ \((ok|WRONG)\), shape", out, re.M)
    for name in ("baseline.mp4", "surf.mp4"):
        video = iio.imread(tmp_path / name)
        assert video.shape == (NUM_FRAMES, TARGET_SIZE, TARGET_SIZE, 3)
        assert video.std() > 1  # not a blank video
    png = iio.imread(tmp_path / "compare.png")
    assert png.shape[0] > 2 * TARGET_SIZE and png.shape[1] > 5 * TARGET_SIZE


def test_compare_image_places_the_chosen_frames():
    rng = np.random.default_rng(3)
    a, b = rng.random((9, 6, 10, 3)), rng.random((9, 6, 10, 3))
    img = np.asarray(compare_image({"a": a, "b": b}, columns=3, scale=2))
    label_w, pad = 72, 4
    # Row 1 (b), column 2 shows frame 8 (evenly spaced 0, 4, 8), each pixel repeated 2x2.
    tile = img[(12 + pad):(12 + pad) + 12, label_w + 2 * (20 + pad):label_w + 2 * (20 + pad) + 20]
    expect = (b[8] * 255).round().astype(np.uint8).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(tile, expect)


@pytest.mark.parametrize("prompt, why", [("a purple circle moving left", "unknown words"),
                                         ("a red circle", "names no direction")])
def test_bad_prompts_are_refused_with_the_vocabulary(prompt, why):
    with pytest.raises(SystemExit, match=why):
        check_prompt(prompt)
    check_prompt("a green square moving right")
