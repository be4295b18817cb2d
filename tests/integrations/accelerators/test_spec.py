"""``surf-accel generate --cache SPEC`` (surf_accel.stages.install_cache, the forms the accelerators register)."""

import pytest

from surf_accel import cli
from tests.tiny_pipelines import tiny_wan_t2v

ARGS = ["--prompt", "a red circle", "--height", "64", "--width", "64", "--frames", "5", "--steps", "8", "--guidance",
        "3", "--max-sequence-length", "16", "--dtype", "float32", "--device", "cpu", "--optimal-size", "32", "32",
        "--preview-steps", "8", "--switch-step", "4", "--refine-steps", "4", "--handoff", "latent"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "wan"
    tiny_wan_t2v().save_pretrained(path)
    return str(path)


def test_generate_with_fbc(model, tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert cli.main(["generate", model, *ARGS, "--output", str(out), "--cache", "fbc:0.05"]) == 0
    assert "cache: FirstBlockCache (threshold 0.05)" in capsys.readouterr().err and out.exists()


def test_bad_spec_through_the_cli(model, tmp_path, capsys):
    assert cli.main(["generate", model, *ARGS, "--output", str(tmp_path / "v.mp4"), "--cache", "deepcache:1"]) == 2
    assert "unknown form; use one of teacache:THRESHOLD" in capsys.readouterr().err


@pytest.mark.parametrize("spec, msg", [
    ("teacache:0.2", "no published TeaCache coefficients match"),  # a tiny Wan is no published checkpoint
    ("teacache:fast", "the threshold must be a number"),
    ("magcache", "mag_ratios"),
    ("fbc", "unknown form"),
])
def test_bad_cache_specs(spec, msg):
    from surf_accel.registry import install_cache

    pipe = tiny_wan_t2v()
    with pytest.raises(ValueError, match=msg):
        install_cache(pipe, spec)
    assert not pipe.transformer.is_cache_enabled and not hasattr(pipe.transformer, "_surf_teacache")
