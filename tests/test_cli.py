import json
import os

from surf_accel import cli


def test_estimate_prints_stages_and_speedup(capsys):
    assert cli.main(["estimate", "--model", "wan2.1-14b", "--height", "720", "--width", "1280", "--frames", "81",
                     "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    for word in ("baseline", "preview_low", "refine", "vae encode", "attention", "predicted speedup"):
        assert word in out


def test_estimate_bad_size_is_clear(capsys):
    assert cli.main(["estimate", "--height", "1080", "--width", "1920"]) == 2
    assert "grid" in capsys.readouterr().err


def test_estimate_overrides(capsys):
    assert cli.main(["estimate", "--model", "wan2.1-1.3b", "--height", "480", "--width", "832", "--preset", "fast",
                     "--refine-steps", "4", "--window", "4", "64", "64", "--refiner", "wan2.1-1.3b"]) == 0
    assert "trained_refiner" in capsys.readouterr().out


def test_info_delegates(monkeypatch):
    import surf_accel.info as info

    seen = []
    monkeypatch.setattr(info, "main", lambda argv=None: seen.append(argv) or 0)
    assert cli.main(["info"]) == 0 and seen == [[]]
    assert cli.main(["info", "--check", "--real"]) == 0 and seen[-1] == ["--check", "--real"]


def test_demo_command_runs_the_demo():
    from surf_accel.bench import demo

    assert cli.build_parser().parse_args(["demo"]).func is demo.main


def test_generate_with_baseline(tmp_path, capsys):
    from tests.tiny_pipelines import tiny_wan_t2v

    model = tmp_path / "tiny"
    tiny_wan_t2v("unipc").save_pretrained(model)
    out = tmp_path / "v.mp4"
    rc = cli.main(["generate", str(model), "--prompt", "a red circle", "--height", "32", "--width", "32",
                   "--frames", "5", "--steps", "4", "--guidance", "3", "--max-sequence-length", "16",
                   "--dtype", "float32", "--device", "cpu", "--output", str(out), "--baseline",
                   "--preset", "fast", "--optimal-size", "32", "32", "--preview-steps", "4", "--switch-step", "2",
                   "--refine-steps", "1"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "baseline" in text and "surf" in text and "speedup" in text
    assert out.exists() and os.path.getsize(out) > 0
    assert (tmp_path / "v_baseline.mp4").exists()


def test_generate_missing_folder(capsys):
    assert cli.main(["generate", "/nonexistent/model", "--prompt", "x", "--device", "cpu"]) == 2
    assert "not a local diffusers model folder" in capsys.readouterr().err


def test_estimate_hunyuanvideo_defaults(capsys):
    assert cli.main(["estimate", "--model", "hunyuanvideo", "--height", "720", "--width", "1280"]) == 0
    out = capsys.readouterr().out
    assert "hunyuanvideo: 720x1280, 129 frames" in out and "window (11, 1000, 1000)" in out
    assert "predicted speedup" in out
    assert cli.main(["estimate", "--model", "hunyuanvideo", "--height", "544", "--width", "960", "--cfg",
                     "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "544x960" in out and "window" not in out.split("hunyuanvideo:")[0]
    assert cli.main(["estimate", "--model", "hunyuan", "--height", "720", "--width", "1280"]) == 2
    assert "known" in capsys.readouterr().err


def test_generate_hunyuanvideo_folder(tmp_path, capsys):
    from tests.tiny_pipelines import tiny_hunyuan_t2v

    model = tmp_path / "tiny_hunyuan"
    tiny_hunyuan_t2v().save_pretrained(model)
    out = tmp_path / "h.mp4"
    rc = cli.main(["generate", str(model), "--prompt", "a red circle", "--height", "64", "--width", "64",
                   "--frames", "5", "--steps", "4", "--max-sequence-length", "8", "--dtype", "float32",
                   "--device", "cpu", "--output", str(out), "--optimal-size", "32", "32", "--preview-steps", "4",
                   "--switch-step", "2", "--refine-steps", "1", "--negative-prompt", "ugly",
                   "--true-cfg-scale", "2"])
    assert rc == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "surf" in captured.out and "window (11, 1000, 1000)" in captured.err  # hunyuan-paper by default
    assert out.exists() and os.path.getsize(out) > 0


def test_estimate_with_a_refiner_folder(tmp_path, capsys):
    from surf_accel.refiner import Refiner

    tcfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=32, ffn_dim=16, num_layers=1, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
    r = Refiner.random(tcfg, num_steps=7)
    r.metadata = {"inference": {"window": [4, 1000, 1000]}}
    r.save_pretrained(tmp_path / "ref")
    assert cli.main(["estimate", "--height", "720", "--width", "1280", "--refiner", str(tmp_path / "ref")]) == 0
    out = capsys.readouterr().out
    assert "7 steps" in out and "window (4, 1000, 1000)" in out and "trained_refiner" in out
    assert cli.main(["estimate", "--height", "720", "--width", "1280", "--refiner", str(tmp_path / "nope")]) != 0


def test_train_refiner_registered_and_missing_config_is_clear(tmp_path, capsys):
    args = cli.build_parser().parse_args(["train-refiner", "x.yaml", "--stop-after-steps", "3"])
    assert callable(args.func) and args.stop_after_steps == 3
    assert cli.main(["train-refiner", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_refiner_plan_loads_nothing_and_reports_the_run(tmp_path, capsys, monkeypatch):
    """``--plan`` prints the plan from config files alone: no pipeline or weights loaded (the loaders are
    made to fail), no output folder made; ``--json`` gives the same numbers as the table."""
    import diffusers

    from surf_accel.training import model as training_model

    def refuse(*a, **k):
        raise AssertionError("--plan loaded weights")

    monkeypatch.setattr(training_model, "load_base_pipeline", refuse)
    monkeypatch.setattr(diffusers.ModelMixin, "from_pretrained", refuse)
    monkeypatch.setattr(diffusers.DiffusionPipeline, "from_pretrained", refuse)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: run\nbase: toy\ndata: {height: 64, width: 64, num_frames: 9, num_clips: 12}\n"
                   "model: {config: {num_layers: 2}}\ntrain: {batch_size: 2, mixed_precision: bf16}\n")
    assert cli.main(["train-refiner", str(cfg), "--plan", "--gpu", "A100-80GB", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "2 process(es) x A100-80GB" in out and "DDP gradient buckets" in out and "pair store: 12 pairs" in out
    assert cli.main(["train-refiner", str(cfg), "--plan", "--json", "--caption-tokens", "5"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["processes"] == 1 and d["disk"]["caption_tokens"] == 5 and d["phases"][0]["tokens"] == 3 * 8 * 8
    assert not (tmp_path / "run").exists()


def test_train_refiner_plan_reports_config_errors_as_the_cli_does(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: run\nmodel: {config: {nlayers: 2}}\n")
    assert cli.main(["train-refiner", str(cfg), "--plan"]) == 2
    assert "surf-accel train-refiner: error: model.config has key(s)" in capsys.readouterr().err
    cfg.write_text("output_dir: run\ntrain: {batchsize: 2}\n")
    assert cli.main(["train-refiner", str(cfg), "--plan"]) == 2
    assert "unknown key(s) in train: batchsize" in capsys.readouterr().err
    cfg.write_text("output_dir: run\nbase: ./nowhere\n")
    assert cli.main(["train-refiner", str(cfg), "--plan"]) == 2
    assert "not a local diffusers pipeline folder" in capsys.readouterr().err
