"""Refiner training checkpoints (finding 7): a resume takes the newest checkpoint whose files read back
and names the damaged ones, a failed save on a full disk says so and leaves the earlier checkpoints
loadable. Oracle: the uninterrupted run's losses (resuming from step 2 repeats steps 3.. exactly)."""

import errno
import os
import shutil

import pytest
import torch

from surf_accel import files
from surf_accel.training import config_from_dict
from surf_accel.training.loop import checkpoint_dirs, train
from tests.training.common import tiny_config

# six steps, a checkpoint every two (kept), no validation: checkpoints at steps 2, 4 and 6
STEPS = dict(train={"max_steps": 6, "batch_size": 2, "lr": 1e-3, "ema_decay": 0.9}, checkpoint={"every": 2, "keep": 5})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    cfg = config_from_dict(tiny_config(root / "full", **STEPS))
    res = train(cfg, progress=False)
    assert res.finished and [p.name for p in checkpoint_dirs(cfg.output_dir)] == [
        "step-00000002", "step-00000004", "step-00000006"]
    return cfg, dict(res.losses)


def _resumable_copy(full_run, tmp_path):
    """The full run's folder with its checkpoint of step 6 dropped: the next train() resumes at step 4."""
    cfg, _ = full_run
    out = tmp_path / "run"
    shutil.copytree(cfg.output_dir, out)
    shutil.rmtree(out / "checkpoints" / "step-00000006")
    shutil.rmtree(out / "refiner")
    return config_from_dict(tiny_config(out, **STEPS, data={"cache_dir": str(cfg.cache_dir)})), out


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damaged", ["trainer_state.json", "model-rank00000-of-00001.safetensors",
                                     "optimizer-rank00000-of-00001.safetensors", "ema-rank00000-of-00001.safetensors"])
def test_resume_skips_a_damaged_newest_checkpoint(full_run, tmp_path, caplog, damaged):
    losses = full_run[1]
    cfg, _ = _resumable_copy(full_run, tmp_path)
    bad = cfg.output_dir + f"/checkpoints/step-00000004/{damaged}"
    _truncate(tmp_path / "run" / "checkpoints" / "step-00000004" / damaged)
    with caplog.at_level("WARNING", logger="surf_accel.training"):
        res = train(cfg, stop_after_steps=2, progress=False)
    assert bad in caplog.text  # the damaged file is named
    assert [s for s, _ in res.losses] == [3, 4]  # resumed from step 2, the newest sound checkpoint
    assert [l for _, l in res.losses] == pytest.approx([losses[3], losses[4]], abs=0)


def test_every_checkpoint_damaged_is_an_error_naming_them(full_run, tmp_path):
    cfg, out = _resumable_copy(full_run, tmp_path)
    for d in ("step-00000002", "step-00000004"):
        _truncate(out / "checkpoints" / d / "trainer_state.json")
    with pytest.raises(ValueError, match="step-00000002/trainer_state.json.*--no-resume"):
        train(cfg, progress=False)


def test_full_disk_while_saving_a_checkpoint(full_run, tmp_path, monkeypatch):
    cfg, out = _resumable_copy(full_run, tmp_path)
    real_write = files.write_bytes

    def full_disk_write(path, data):  # the disk fills up at the optimizer's file
        if "optimizer-" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(files, "write_bytes", full_disk_write)
    with pytest.raises(OSError, match=r"could not write checkpoint .*step-00000006: disk full"):
        train(cfg, progress=False)
    assert sorted(os.listdir(out / "checkpoints")) == ["step-00000002", "step-00000004"]
    monkeypatch.undo()
    assert train(cfg, progress=False).finished  # the earlier checkpoints resume
