import pytest

from surf_accel.config import PRESETS, SurfConfig


def test_defaults_are_the_paper():
    c = SurfConfig()
    assert (c.preview_steps, c.switch_step, c.downsample, c.handoff, c.refine_steps) == (40, 10, 2, "pixel", 10)
    assert c.reshift == "consistent" and c.renoise == "fresh"
    # The presets use the paper's reshift (measured on the toy world, benchmarks/results/signature.md).
    assert SurfConfig.preset("paper") == c.replace(reshift="paper")


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
    (dict(refine_start=0.0), "refine_start"),
    (dict(refine_start=1.5), "refine_start"),
    (dict(refine_start=float("nan")), "refine_start"),
    (dict(refine_guidance=float("inf")), "refine_guidance"),
    (dict(window=(1, 2)), "window"),
    (dict(window=(0, 2, 2)), "window"),
    (dict(window=(1, 2, 2), refine_steps=0), "window"),
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
