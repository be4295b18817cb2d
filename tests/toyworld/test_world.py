"""The procedural world: seeded, balanced, resolution-free, in the layout diffusers' VAEs take."""

import math

import pytest
import torch

from surf_accel.toyworld import world


def test_prompt_round_trip_and_vocabulary():
    for c, s, d in world.all_label_combinations():
        p = world.prompt_for(c, s, d)
        assert world.parse_prompt(p) == {"colour": c, "shape": s, "direction": d}
        assert set(p.split()) <= set(world.vocabulary())
    assert len(world.all_label_combinations()) == len(world.COLOURS) * len(world.SHAPES) * len(world.DIRECTIONS)


def test_sampling_is_seeded_and_balanced():
    a = world.sample_specs(64, seed=3)
    assert a == world.sample_specs(64, seed=3)
    assert a != world.sample_specs(64, seed=4)
    combos = [(s.colour, s.shape, s.direction) for s in a]
    assert all(combos.count(c) == 2 for c in world.all_label_combinations())


@pytest.mark.parametrize("size", [32, 64, 128])
def test_render_layout_range_and_path_inside(size):
    spec = world.sample_specs(8, seed=1)[5]
    clip = spec.render(size, num_frames=17)
    assert clip.shape == (3, 17, size, size) and clip.dtype == torch.float32
    assert clip.min() >= -1 and clip.max() <= 1
    track = spec.track(17)
    r = max(world.CIRCLE_RADIUS, world.SQUARE_HALF)
    assert (track >= r).all() and (track <= 1 - r).all()
    # The object is fully inside every frame: its coverage equals its area in every frame.
    bg = torch.tensor(world.BACKGROUND).view(3, 1, 1, 1) * 2 - 1
    cover = ((clip - bg).abs().amax(0) > 1e-6).float().sum((1, 2))
    assert (cover.max() - cover.min()) / cover.max() < 0.15


def test_same_scene_at_every_resolution():
    spec = world.random_spec(__import__("random").Random(0), "green", "circle", "right")
    lo = spec.render(32)
    hi = spec.render(128)
    hi_down = torch.nn.functional.avg_pool3d(hi, (1, 4, 4))
    assert (hi_down - lo).abs().mean() < 0.02


def test_shapes_have_matching_area_and_move_as_labelled():
    rng = __import__("random").Random(1)
    for shape in world.SHAPES:
        for direction, (ux, uy) in world.DIRECTION_VECTORS.items():
            spec = world.random_spec(rng, "red", shape, direction)
            clip = spec.render(128)
            fg = (clip[0] > 0).float()  # red channel high only on the object
            area = fg.sum((1, 2)) / 128 ** 2
            expect = math.pi * world.CIRCLE_RADIUS ** 2 if shape == "circle" else (2 * world.SQUARE_HALF) ** 2
            assert abs(area.mean().item() - expect) / expect < 0.08
            ys, xs = torch.meshgrid(torch.arange(128.0), torch.arange(128.0), indexing="ij")
            cx = [(fg[t] * xs).sum() / fg[t].sum() for t in (0, 16)]
            cy = [(fg[t] * ys).sum() / fg[t].sum() for t in (0, 16)]
            dx, dy = (cx[1] - cx[0]) / 128, (cy[1] - cy[0]) / 128
            assert dx * ux + dy * uy > 0.25
            assert abs(dx * uy) + abs(dy * ux) < 0.02


def test_numpy_layout_matches_pipeline_output():
    clip = world.sample_specs(1, seed=0)[0].render(32, num_frames=5)
    v = world.to_numpy_video(clip)
    assert v.shape == (5, 32, 32, 3) and v.min() >= 0 and v.max() <= 1
