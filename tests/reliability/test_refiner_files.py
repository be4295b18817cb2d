"""Refiner exports (findings 4, 8): a failed export leaves the previous refiner loadable, training never
writes into the installed package, and loading names the file (and key) of whatever is wrong instead
of loading it. Oracles: the saved tensors themselves and the JSON written by hand."""

import errno
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from surf_accel.refiner import CONFIG_NAME, WEIGHTS_NAME, Refiner

TCFG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
            text_dim=32, freq_dim=32, ffn_dim=16, num_layers=1, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=64)


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "ref"
    Refiner.random(TCFG, num_steps=3).save_pretrained(folder)
    return folder


def test_a_failed_export_keeps_the_previous_refiner(saved):
    before = load_file(str(saved / WEIGHTS_NAME))
    newer = Refiner.random(dict(TCFG, num_layers=2), num_steps=5, seed=1)

    def full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    newer.transformer.state_dict = full_disk
    with pytest.raises(OSError, match="disk full"):
        newer.save_pretrained(saved)
    loaded = Refiner.from_pretrained(saved)
    assert loaded.num_steps == 3
    assert all(torch.equal(v, before[k]) for k, v in loaded.transformer.state_dict().items())
    assert sorted(os.listdir(saved.parent)) == ["ref"]


def test_an_export_never_empties_a_folder_of_other_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OSError, match="notes.txt"):
        Refiner.random(TCFG).save_pretrained(folder)
    assert os.listdir(folder) == ["notes.txt"]


def test_the_toy_refiner_config_exports_outside_the_package(monkeypatch, tmp_path):
    from pathlib import Path

    import surf_accel
    from surf_accel.training import load_config

    monkeypatch.setenv("SURF_TOY_TRAIN_DIR", str(tmp_path))
    package = Path(surf_accel.__file__).resolve().parent
    cfg = load_config(package / "toyworld" / "refiner" / "train.yaml")
    assert package not in Path(cfg.export_dir).resolve().parents


def test_an_export_into_the_package_is_refused(tmp_path):
    from pathlib import Path

    import surf_accel
    from surf_accel.training import config_from_dict
    from surf_accel.training.export import export_refiner

    inside = Path(surf_accel.__file__).resolve().parent / "toyworld" / "_must_not_be_written"
    cfg = config_from_dict({"output_dir": str(tmp_path), "export": {"dir": str(inside)}})
    try:
        with pytest.raises(ValueError, match="inside the installed surf_accel package"):
            export_refiner(Refiner.random(TCFG).transformer, cfg, step=1)
        assert not inside.exists()
    finally:
        shutil.rmtree(inside, ignore_errors=True)


def test_training_into_the_package_is_refused_before_it_starts(monkeypatch):
    from pathlib import Path

    import surf_accel
    from surf_accel.training import config_from_dict, loop

    def started(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "_make_accelerator", started)
    inside = Path(surf_accel.__file__).resolve().parent / "toyworld" / "_must_not_be_written"
    with pytest.raises(ValueError, match="output_dir .* inside the installed surf_accel package"):
        loop.train(config_from_dict({"output_dir": str(inside)}))
    assert not inside.exists()


def _edit_config(folder, **changes):
    path = folder / CONFIG_NAME
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, words", [
    (dict(num_steps=2.7), ["num_steps", "2.7"]),
    (dict(num_steps=True), ["num_steps"]),
    (dict(format_version=99), ["format_version 99"]),
    (dict(transformer_config=None), ["'transformer_config'"]),
], ids=["fractional-steps", "bool-steps", "future-format", "no-transformer-config"])
def test_config_errors_name_the_file_and_key(saved, changes, words):
    _edit_config(saved, **changes)
    with pytest.raises(ValueError) as e:
        Refiner.from_pretrained(saved)
    for w in [str(saved / CONFIG_NAME), *words]:
        assert w in str(e.value)


def test_truncated_config_names_the_file(saved):
    path = saved / CONFIG_NAME
    path.write_text(path.read_text()[:40])
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        Refiner.from_pretrained(saved)


def test_truncated_weights_name_the_file(saved):
    path = saved / WEIGHTS_NAME
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match=f"{path} cannot be read"):
        Refiner.from_pretrained(saved)


def test_non_finite_weights_are_refused_naming_the_tensor(saved):
    path = saved / WEIGHTS_NAME
    state = load_file(str(path))
    key = sorted(state)[3]
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(path))
    with pytest.raises(ValueError, match=f"{path}: 1 weight tensor.*NaN.*{key}"):
        Refiner.from_pretrained(saved)
