"""Families registered from outside the package (surf_accel.family, surf_accel.registry): the
documented example runs as written; registration refuses clashes and bad declarations; a registered
family is what patch, the catalogue and the presets see, and unregistering forgets it."""

import re
from pathlib import Path

import pytest

import surf_accel
from surf_accel import catalogue, registry
from surf_accel.config import PRESETS, SurfConfig
from surf_accel.cost_model import TransformerSpec
from surf_accel.family import Family
from surf_accel.integrations.wan import WanAdapter
from tests.tiny_pipelines import tiny_wan_t2v

DOC = Path(__file__).resolve().parent.parent / "docs" / "adding_a_family.md"


def test_the_documented_example_runs_as_written(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks, "docs/adding_a_family.md has no python block"
    try:
        for block in blocks:
            exec(compile(block, str(DOC), "exec"), {"__name__": "adding_a_family"})
    finally:
        registry.unregister_family("studio-wan")
    assert capsys.readouterr().out.startswith("studio ")
    assert "studio" not in PRESETS and "studio-wan-tiny" not in catalogue.models()


class _TinyWanPipelineAdapter(WanAdapter):
    family = "test-wan"
    supported_pipelines = ("WanPipeline",)
    default_preset = "test-preset"


def _family(**changes):
    fields = dict(name="test-wan", adapter=_TinyWanPipelineAdapter(optimal_area=32 * 32),
                  models={"test-wan-spec": TransformerSpec("test-wan-spec", 32, 64, 2, 2, family="test-wan")},
                  presets={"test-preset": (SurfConfig(name="test-preset", handoff="latent"), "a test preset")})
    fields.update(changes)
    return Family(**fields)


def test_a_registered_family_is_what_patch_and_the_catalogue_see():
    pipe = tiny_wan_t2v()
    assert registry.find_family(pipe).name == "wan"
    registry.register_family(_family())
    try:
        assert registry.find_family(pipe).name == "test-wan"  # the later registration claims the pipeline
        surf_accel.patch(pipe)
        assert surf_accel.api.get_config(pipe).name == "test-preset"
        assert catalogue.models()["test-wan-spec"].dim == 32
        surf_accel.unpatch(pipe)
    finally:
        registry.unregister_family("test-wan")
    assert registry.find_family(pipe).name == "wan" and "test-preset" not in PRESETS
    assert "test-wan-spec" not in catalogue.models()


@pytest.mark.parametrize("changes, error, message", [
    (dict(adapter=object()), TypeError, "FamilyAdapter instance"),
    (dict(models={"wan2.1-14b": None}), ValueError, "already belong to family 'wan'"),
    (dict(presets={"hunyuan-paper": (SurfConfig(), "")}), ValueError, "already belong to family 'hunyuanvideo'"),
    (dict(presets={"paper": (SurfConfig(), "")}), ValueError, "preset 'paper' already exists"),
])
def test_bad_registrations_are_refused_and_leave_nothing(changes, error, message):
    before = (registry.families(), dict(PRESETS))
    with pytest.raises(error, match=message):
        registry.register_family(_family(**changes))
    assert (registry.families(), dict(PRESETS)) == before


def test_register_family_takes_a_family():
    with pytest.raises(TypeError, match="takes a surf_accel.Family"):
        registry.register_family("wan")
