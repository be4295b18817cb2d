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

    assert cli_main(["demo", "--out", str(tmp_path), "--steps", "4", "--repeats", "2",
                     "--prompt", "a blue square moving down", *flag]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^refiner: " + re.escape(refiner), out, re.M)
    assert re.search(r"^times: median of 2 interleaved runs each", out, re.M)
    assert "1 CPU thread(s)" in out  # the default: one thread
    base = re.search(r"^baseline: +([0-9.]+) s \(([0-9.]+) s CPU\)$", out, re.M)
    surf = re.search(r"^SURF: +([0-9.]+) s \(([0-9.]+) s CPU\)$", out, re.M)
    cpu, wall = map(float, re.search(r"^speedup: ([0-9.]+)x in process CPU time \(([0-9.]+)x in wall time\)$",
                                     out, re.M).groups())
    # the printed times are rounded to 10 ms
    assert wall == pytest.approx(float(base.group(1)) / float(surf.group(1)), rel=0.02)
    assert cpu == pytest.approx(float(base.group(2)) / float(surf.group(2)), rel=0.02)
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
    img = np.asarray(compare_image({"a": a, "b\n1.0 s": b}, columns=3, scale=2))
    label_w, pad, top = 190, 6, 4 + 20  # label column, gap, no title + the frame-index line
    # Row 1 (b), column 2 shows frame 8 (evenly spaced 0, 4, 8), each pixel repeated 2x2.
    y, x = top + (12 + pad), label_w + 2 * (20 + pad)
    expect = (b[8] * 255).round().astype(np.uint8).repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(img[y:y + 12, x:x + 20], expect)
    titled = np.asarray(compare_image({"a": a}, title="a red circle moving left", columns=3, scale=2))
    assert titled.shape[0] == 34 + 20 + 12 + pad and (titled[:30, :200] < 128).any()  # the title is drawn


@pytest.mark.parametrize("prompt, why", [("a purple circle moving left", "unknown words"),
                                         ("a red circle", "names no direction")])
def test_bad_prompts_are_refused_with_the_vocabulary(prompt, why):
    with pytest.raises(SystemExit, match=why):
        check_prompt(prompt)
    check_prompt("a green square moving right")
