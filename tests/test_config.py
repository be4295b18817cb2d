import pytest

from surf_accel.config import PRESETS, SurfConfig


def test_defaults_are_the_paper():
    c = SurfConfig()
    assert (c.downsample, c.handoff, c.reshift, c.renoise, c.step_precision) == (2, "pixel", "consistent", "fresh",
                                                                                 "pipeline")
    # the paper against Wan2.1's 50-step call: 40 preview steps (10 at the optimal size, 30 low), 10 refine
    assert c.step_counts(50) == (40, 10, 10)
    assert SurfConfig.preset("paper").step_counts(50) == (40, 10, 10)


@pytest.mark.parametrize("steps, want", [(50, (40, 10, 10)), (40, (32, 8, 8)), (20, (16, 4, 4)), (8, (6, 2, 2)),
                                         (2, (2, 1, 1)), (1, (1, 1, 1))])
def test_steps_follow_the_call(steps, want):
    assert SurfConfig().step_counts(steps) == want


def test_fast_and_quality_follow_the_call():
    # their former fixed counts at Wan's default 50 steps
    assert SurfConfig.preset("fast").step_counts(50) == (30, 8, 8)
    assert SurfConfig.preset("fast").step_counts(20) == (12, 3, 3)
    assert SurfConfig.preset("quality").step_counts(50) == (50, 20, 12)


def test_explicit_counts_override_the_fractions():
    c = SurfConfig(preview_steps=30, switch_step=7, refine_steps=3)
    assert c.step_counts(50) == (30, 7, 3)
    assert SurfConfig(switch_step=5).step_counts(12) == (10, 5, 2)
    with pytest.raises(ValueError, match="switch_step .12. must be <= the preview's steps .8 for a call of 10"):
        SurfConfig(switch_step=12).step_counts(10)


def test_trained_refiner_steps_unless_refine_steps_is_set():
    assert SurfConfig().step_counts(50, trained_refiner_steps=7) == (40, 10, 7)
    assert SurfConfig(refine_steps=4).step_counts(50, trained_refiner_steps=7) == (40, 10, 4)
    assert SurfConfig(refine_steps=0).step_counts(50, trained_refiner_steps=7)[2] == 0


def test_identity_counts():
    assert SurfConfig.identity().step_counts(13) == (13, 13, 0)
    assert SurfConfig(refine_fraction=0.0).step_counts(50)[2] == 0


def test_presets_exist_and_validate():
    assert {"paper", "fast", "quality", "identity"} <= set(PRESETS)
    for name in PRESETS:
        cfg = SurfConfig.preset(name)
        assert cfg.name == name
    assert set(SurfConfig.presets()) == set(PRESETS)


def test_frozen():
    c = SurfConfig()
    with pytest.raises(Exception):
        c.downsample = 4


def test_replace_revalidates():
    c = SurfConfig().replace(refine_steps=3)
    assert c.refine_steps == 3 and c.name is None
    with pytest.raises(ValueError, match="refine_steps"):
        SurfConfig().replace(refine_steps=-1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimal_size=(480,)), "optimal_size"),
    (dict(optimal_size=(480.0, 832)), "optimal_size"),
    (dict(optimal_size="big"), "optimal_size"),
    (dict(preview_steps=0), "preview_steps"),
    (dict(switch_step=0), "switch_step"),
    (dict(preview_steps=10, switch_step=11), "switch_step"),
    (dict(downsample=0), "downsample"),
    (dict(downsample=1.5), "downsample"),
    (dict(reshift="other"), "reshift"),
    (dict(renoise="zero"), "renoise"),
    (dict(handoff="vae"), "handoff"),
    (dict(latent_resize="cubic"), "latent_resize"),
    (dict(refine_steps=-1), "refine_steps"),
    (dict(switch_fraction=0.0), "switch_fraction"),
    (dict(switch_fraction=1.5), "switch_fraction"),
    (dict(preview_fraction=0.0), "preview_fraction"),
    (dict(refine_fraction=-0.1), "refine_fraction"),
    (dict(refine_fraction=float("nan")), "refine_fraction"),
    (dict(reshift="paper_low"), "reshift"),
    (dict(step_precision="bf16"), "step_precision"),
    (dict(shifts=(0.9, None, None)), "shifts"),
    (dict(refine_start=0.0), "refine_start"),
    (dict(refine_start=1.5), "refine_start"),
    (dict(refine_start=float("nan")), "refine_start"),
    (dict(refine_guidance=float("inf")), "refine_guidance"),
    (dict(window=(1, 2)), "window"),
    (dict(window=(0, 2, 2)), "window"),
    (dict(window=(1, 2, 2), refine_steps=0), "window"),
    (dict(window=(1, 2, 2), refine_fraction=0.0), "window"),
    (dict(shift_rule="linear"), "shift_rule"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SurfConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="known presets"):
        SurfConfig.preset("turbo")


def test_identity():
    c = SurfConfig.identity()
    assert c.optimal_size == "request" and c.refine_steps == 0 and c.preview_steps is None
    assert c.step_precision == "pipeline" and c.switch_fraction == 1.0 and c.downsample == 1
