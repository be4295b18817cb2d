"""The training config: YAML/JSON loading, validation, and what a resume may change."""

import json

import pytest

from surf_accel.training.config import ConfigError, config_from_dict, load_config
from tests.training.common import tiny_config


def test_yaml_and_json_give_the_same_config(tmp_path):
    import yaml

    d = tiny_config("run")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    (tmp_path / "c.json").write_text(json.dumps(d))
    a, b = load_config(tmp_path / "c.yaml"), load_config(tmp_path / "c.json")
    assert a == b
    assert a.output_dir == str(tmp_path / "run")  # relative to the config file
    assert a.model.window == (1, 4, 4) and a.pairs.blur_sigma == (0.0, 1.0)


def test_unknown_keys_and_bad_values_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*lrate"):
        config_from_dict(tiny_config(tmp_path, train={"lrate": 1}))
    with pytest.raises(ConfigError, match="s_distribution"):
        config_from_dict(tiny_config(tmp_path, objective={"s_distribution": "beta"}))
    with pytest.raises(ConfigError, match="video_dir"):
        config_from_dict(tiny_config(tmp_path, data={"source": "videos"}))
    with pytest.raises(ConfigError, match="output_dir"):
        config_from_dict({"base": "toy"})
    with pytest.raises(ConfigError, match="base_pairs.num"):
        config_from_dict(tiny_config(tmp_path, base_pairs={"num": -1}))
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_fingerprint_ignores_only_resumable_fields(tmp_path):
    a = config_from_dict(tiny_config(tmp_path))
    same = config_from_dict(tiny_config(tmp_path / "elsewhere", validation={"every": 5}, checkpoint={"every": 3},
                                        log_every=7, train={"max_steps": 60}))  # constant lr: may be extended
    assert a.fingerprint() == same.fingerprint()
    for changed in (dict(train={"lr": 2e-3}), dict(pairs={"handoff": "pixel"}), dict(seed=1),
                    dict(model={"num_steps": 8}), dict(train={"max_steps": 60, "lr_schedule": "cosine"}),
                    dict(base_pairs={"num": 4})):
        assert config_from_dict(tiny_config(tmp_path, **changed)).fingerprint() != a.fingerprint(), changed


def test_curriculum_sets_max_steps(tmp_path):
    c = config_from_dict(tiny_config(tmp_path, train={"curriculum": [{"steps": 3, "frames": 5}, {"steps": 4}]}))
    assert c.train.max_steps == 7
    assert [(p.steps, p.frames, p.batch_size) for p in c.train.phases(17)] == [(3, 5, 4), (4, 17, 4)]


def test_paths_expand_variables_and_refuse_unset_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("SURF_TEST_RUNS", str(tmp_path / "runs"))
    assert config_from_dict(tiny_config("$SURF_TEST_RUNS/a")).output_dir == str(tmp_path / "runs" / "a")
    monkeypatch.delenv("SURF_TEST_RUNS")
    with pytest.raises(ConfigError, match="not set"):
        config_from_dict(tiny_config("$SURF_TEST_RUNS/a"))


def test_shipped_toy_refiner_config_is_valid(monkeypatch, tmp_path):
    from pathlib import Path

    import surf_accel.toyworld as tw

    monkeypatch.setenv("SURF_TOY_TRAIN_DIR", str(tmp_path))
    c = load_config(Path(tw.__file__).parent / "refiner" / "train.yaml")
    assert c.export_dir == tmp_path / "refiner" / "refiner" and c.output_dir == str(tmp_path / "refiner")
    assert c.pairs.handoff == tw.surf_config().handoff  # trained for the toy SURF setting's handoff


def test_learning_rate_schedule(tmp_path):
    from surf_accel.training.loop import _lr_lambda

    c = config_from_dict(tiny_config(tmp_path, train={"max_steps": 110, "warmup_steps": 10, "lr_schedule": "cosine"}))
    f = _lr_lambda(c)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)
    const = _lr_lambda(config_from_dict(tiny_config(tmp_path)))
    assert const(0) == const(1000) == 1.0
