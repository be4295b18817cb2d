"""A model folder's surf_config.json: read/write, its errors, the shipped toy folder's setting, and its
use by patch(pipe) and by surf-accel generate's checks before loading."""

import json
import shutil

import pytest

import surf_accel
import surf_accel.toyworld as tw
from surf_accel import SurfConfig, cli, folder_setting
from surf_accel.refiner import Refiner


def test_write_then_read_gives_the_same_setting(tmp_path):
    (tmp_path / "refiner").mkdir()
    (tmp_path / "refiner" / "config.json").write_text("{}")
    cfg = SurfConfig.preset("fast").replace(window=(2, 1000, 1000), refine_start=0.55)
    folder_setting.write(tmp_path, cfg, refiner="refiner", teacache=("temb", (1.0, -0.5)),
                         call={"height": 64, "width": 96, "guidance_scale": 3.5})
    s = folder_setting.read(tmp_path)
    assert s.config == cfg and s.refiner == (tmp_path / "refiner").resolve()
    assert s.teacache == ("temb", (1.0, -0.5)) and s.call == {"height": 64, "width": 96, "guidance_scale": 3.5}
    with pytest.raises(FileExistsError, match="overwrite"):
        folder_setting.write(tmp_path, cfg)
    assert folder_setting.read(tmp_path / "refiner") is None


@pytest.mark.parametrize("data, match", [
    ({"format_version": 2, "config": {}}, "format_version 2"),
    ({"format_version": 1, "config": {}, "extra": 1}, r"unknown keys \['extra'\]"),
    ({"format_version": 1, "config": {"switch_stepp": 3}}, r"unknown: \['switch_stepp'\]"),
    ({"format_version": 1, "config": {"handoff": "teleport"}}, "'config'"),
    ({"format_version": 1, "config": {}, "refiner": "nowhere"}, "'refiner' 'nowhere' is no model folder"),
    ({"format_version": 1, "config": {}, "teacache": {"indicator": "temb"}}, "'teacache' must be"),
    ({"format_version": 1, "config": {}, "call": {"height": 64.5}}, "'call' must map"),
    ({"format_version": 1, "config": {}, "call": {"steps": 4}}, "'call' must map"),
])
def test_a_setting_it_cannot_use_names_the_file_and_the_key(tmp_path, data, match):
    (tmp_path / "surf_config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as e:
        folder_setting.read(tmp_path)
    assert str(tmp_path / "surf_config.json") in str(e.value)


def test_the_toy_folder_carries_the_demo_setting():
    s = folder_setting.read(tw.PIPELINE_DIR)
    assert s.config == tw.surf_config() and s.refiner == tw.REFINER_DIR.resolve()
    assert s.teacache == tw.TEACACHE_FIT
    assert s.call == {"height": tw.TARGET_SIZE, "width": tw.TARGET_SIZE, "num_frames": tw.NUM_FRAMES,
                      "num_inference_steps": tw.DEFAULT_STEPS, "guidance_scale": tw.DEFAULT_GUIDANCE}


def test_patch_without_a_config_takes_the_folders_config_and_refiner():
    pipe = tw.load_pipeline()
    surf_accel.patch(pipe)
    try:
        state = pipe.__dict__["_surf_state"]
        assert state.config == tw.surf_config() and isinstance(state.refiner, Refiner)
        assert surf_accel.patch(pipe) is pipe  # the same setting again: a no-op
        with pytest.raises(ValueError, match="already patched"):
            surf_accel.patch(pipe, "paper")
    finally:
        surf_accel.unpatch(pipe)
    surf_accel.patch(pipe, "paper")  # an explicit config: the folder's setting is not read
    try:
        assert pipe.__dict__["_surf_state"].config == SurfConfig.preset("paper")
        assert pipe.__dict__["_surf_state"].refiner is None
    finally:
        surf_accel.unpatch(pipe)


def _checked(*argv):
    return cli._check_generate(cli.build_parser().parse_args(["generate", *argv, "--prompt", "a red circle moving up",
                                                              "--device", "cpu", "--output", "/tmp/never.mp4"]))


def test_generate_on_the_toy_folder_runs_the_demo_setting_before_loading_anything():
    c = _checked(str(tw.PIPELINE_DIR))
    assert c.config == tw.surf_config() and c.refiner == tw.REFINER_DIR.resolve()
    assert c.request == {"height": 128, "width": 128, "num_frames": 17, "num_inference_steps": 25,
                         "guidance_scale": 4.0}
    c = _checked(str(tw.PIPELINE_DIR), "--height", "64", "--width", "64", "--refiner", "none", "--preset", "paper",
                 "--cache", "teacache:0.15")  # TeaCache takes the folder's rescale: no published coefficients needed
    assert c.refiner is None and c.config == SurfConfig.preset("paper") and c.request["height"] == 64
    c = _checked(str(tw.PIPELINE_DIR), "--refiner", str(tw.SIBLING_DIR))
    assert c.refiner == str(tw.SIBLING_DIR)
    with pytest.raises(ValueError, match="no config.json"):
        _checked(str(tw.PIPELINE_DIR), "--refiner", "/nonexistent")


def test_teacache_on_a_folder_without_coefficients_is_refused_before_loading(tmp_path):
    folder = tmp_path / "toy"
    shutil.copytree(tw.PIPELINE_DIR, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "surf_config.json").unlink()
    with pytest.raises(ValueError, match="(?i)coefficients|teacache"):
        _checked(str(folder), "--height", "128", "--width", "128", "--cache", "teacache:0.15")
