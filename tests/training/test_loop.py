"""The accelerate loop end to end on the toy pipeline: a 2-process gloo run whose loss goes down,
save / kill / resume equal to the uninterrupted run, the export runs through surf_accel.patch,
a resumed run with a changed config is refused."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import surf_accel
from surf_accel.refiner import Refiner
from surf_accel.training import config_from_dict
from surf_accel.training.loop import ResumeMismatch, checkpoint_dirs, export_checkpoint, train
from tests.training.common import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _weights(folder):
    return load_file(os.path.join(folder, "diffusion_pytorch_model.safetensors"))


def test_kill_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    common = dict(export={"dtype": "float32"}, train={"grad_accum": 2, "curriculum": [{"steps": 3, "frames": 1},
                                                                                       {"steps": 3}]})
    full = config_from_dict(tiny_config(tmp_path / "full", **common))
    res = train(full, progress=False)
    assert res.finished and res.step == 6

    cut = config_from_dict(tiny_config(tmp_path / "cut", **common, data={"cache_dir": str(tmp_path / "full" / "cache")}))
    r1 = train(cut, stop_after_steps=3, progress=False)  # "killed" after step 3: last checkpoint is step 2
    assert not r1.finished and r1.step == 3 and not (tmp_path / "cut" / "refiner").exists()
    assert [p.name for p in checkpoint_dirs(cut.output_dir)] == ["step-00000002"]
    early = Refiner.from_pretrained(export_checkpoint(cut))  # a stopped run's newest checkpoint, exported
    assert early.metadata["trained_steps"] == 2
    r2 = train(cut, progress=False)
    assert r2.finished and r2.losses[0][0] == 3  # steps 3.. were redone
    assert [l for s, l in r2.losses] == pytest.approx([l for s, l in res.losses[2:]], abs=0)
    a, b = _weights(full.export_dir), _weights(cut.export_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], Refiner.random(dict(Refiner.from_pretrained(full.export_dir).config)).transformer
                               .state_dict()[k]) for k in a)  # it trained

    changed = config_from_dict(tiny_config(tmp_path / "cut", **common, pairs={"latent_noise": [0.0, 0.5]}))
    with pytest.raises(ResumeMismatch, match=r"pairs.latent_noise"):
        train(changed, progress=False)


def test_export_loads_and_runs_through_patch(tmp_path):
    cfg = config_from_dict(tiny_config(tmp_path, train={"max_steps": 2}, validation={"every": 0}))
    res = train(cfg, progress=False)
    ref = Refiner.from_pretrained(res.export_dir, torch_dtype=torch.float32)
    meta = ref.metadata
    assert ref.num_steps == 4 and meta["trained_steps"] == 2
    assert meta["training_config"]["pairs"]["handoff"] == "latent" and "z_lr" in meta["data_recipe"]
    assert next(iter(_weights(res.export_dir).values())).dtype == torch.float16
    val = [v for s, v in res.validation]
    assert val and np.isfinite(val[-1]["psnr_refined"]) and np.isfinite(val[-1]["ssim_z_lr"])
    from surf_accel.toyworld import load_pipeline, surf_config

    pipe = load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    seen = []
    ref.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(float(kw["timestep"][0])), with_kwargs=True)
    with surf_accel.patched(pipe, surf_config(window=(1, 4, 4)), refiner=ref):
        out = pipe(prompt="a red circle moving left", height=64, width=64, num_frames=5, num_inference_steps=8,
                   generator=torch.Generator().manual_seed(0), output_type="np").frames
    assert out.shape == (1, 5, 64, 64, 3) and np.isfinite(out).all()
    assert seen == pytest.approx([1000.0, 750.0, 500.0, 250.0])  # its own 4 steps from s = 1


def test_two_process_gloo_run_loss_goes_down(tmp_path):
    import yaml

    cfg = tiny_config(tmp_path / "ddp", train={"max_steps": 24, "batch_size": 4, "lr": 3e-3}, checkpoint={"every": 12},
                      data={"num_clips": 32})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "surf_accel.training", str(path), "--threads", "1", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(l) for l in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    start = records[0]
    assert start["event"] == "start" and start["processes"] == 2 and "MULTI_CPU" in start["distributed_type"]
    assert start["strategy"] == "ddp" and start["pairs"] == 32
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 24
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < 0.6 * first, (first, last)
    Refiner.from_pretrained(tmp_path / "ddp" / "refiner")


def test_lora_bf16_checkpointed_run_exports_a_plain_transformer(tmp_path):
    """init 'lora' on the toy base with bf16 autocast and gradient checkpointing: the loss is finite,
    only adapters train, and the export is the merged plain transformer of the base's shape."""
    cfg = config_from_dict(tiny_config(tmp_path, model={"init": "lora", "config": {}, "lora": {"rank": 2}},
                                       train={"max_steps": 2, "mixed_precision": "bf16",
                                              "gradient_checkpointing": True, "lr": 1e-2}))
    res = train(cfg, progress=False)
    assert res.finished and all(np.isfinite(l) for _, l in res.losses)
    w = _weights(res.export_dir)
    assert not any("lora" in k for k in w)
    from surf_accel.toyworld import load_pipeline

    base = load_pipeline().transformer.state_dict()
    assert w.keys() == base.keys()
    moved = [k for k in w if not torch.equal(w[k].float(), base[k].half().float())]
    assert moved and all(k.endswith("weight") for k in moved)  # merged LoRA deltas land on the adapted linears


DRIVER = """
import json, sys
from surf_accel.training import config_from_dict
from surf_accel.training.loop import train
cfg = config_from_dict(json.loads(open(sys.argv[1]).read()))
train(cfg, stop_after_steps=int(sys.argv[2]) or None, progress=False)
"""


def _torchrun(tmp_path, cfg: dict, name: str, stop: int = 0):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(driver), str(path), str(stop)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_two_processes_make_the_shards_and_resume_mid_epoch_to_the_same_weights(tmp_path):
    """2 processes over gloo: the pair store's shards are made by both (each its own), training reads
    them through loader workers, and a run killed after step 7 (its last checkpoint at step 5, in the
    middle of the second epoch of 16 pairs at 4 a step) resumes to the uninterrupted run's exported
    weights and EMA, bit for bit."""
    from safetensors import safe_open

    common = dict(train={"max_steps": 10, "batch_size": 2, "loader_workers": 1, "ema_decay": 0.9},
                  checkpoint={"every": 5, "keep": 1}, pairs={"shard_size": 4}, export={"dtype": "float32"},
                  log_every=1)
    full = tiny_config(tmp_path / "full", **common)
    _torchrun(tmp_path, full, "full")
    shards = sorted((tmp_path / "full" / "cache").glob("pairs-*/shard-*.safetensors"))
    made_by = []
    for p in shards:
        with safe_open(str(p), "pt") as f:
            made_by.append(f.metadata()["made_by"])
    assert made_by == ["0", "1", "0", "1"]

    cut = tiny_config(tmp_path / "cut", **common)
    _torchrun(tmp_path, cut, "cut", stop=7)
    assert [p.name for p in checkpoint_dirs(tmp_path / "cut")] == ["step-00000005"]
    assert not (tmp_path / "cut" / "refiner").exists()
    _torchrun(tmp_path, cut, "cut")
    a, b = _weights(tmp_path / "full" / "refiner"), _weights(tmp_path / "cut" / "refiner")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ea = load_file(str(checkpoint_dirs(tmp_path / "full")[-1] / "ema-rank00000-of-00001.safetensors"))
    eb = load_file(str(checkpoint_dirs(tmp_path / "cut")[-1] / "ema-rank00000-of-00001.safetensors"))
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    losses = {}
    for name in ("full", "cut"):
        for line in (tmp_path / name / "log.jsonl").read_text().splitlines():
            r = json.loads(line)
            if "loss" in r:
                losses.setdefault(name, {})[r["step"]] = r["loss"]
    assert all(losses["cut"][s] == losses["full"][s] for s in range(6, 11))


def test_micro_batches_get_fresh_latent_noise_of_the_configured_std():
    """``_micro_batch`` adds Gaussian noise of std in ``pairs.latent_noise`` to the loader's ``z_lr`` (drawn
    per step, the same for the same step), leaves ``z_hr`` and the text as read, and checks the loader's
    shape against the phase."""
    from types import SimpleNamespace

    from surf_accel.training.loop import _micro_batch

    cfg = config_from_dict(tiny_config("/tmp/unused", pairs={"latent_noise": [0.5, 0.5]}))
    z = torch.zeros(4, 8, 2, 16, 16)
    text = torch.ones(4, 16, 64)

    def run_with(batches):
        return SimpleNamespace(cfg=cfg, batches=iter(batches), accelerator=SimpleNamespace(process_index=0))

    run = run_with([(z + 1, z, text)] * 3)
    a = _micro_batch(run, 5, 0, 4, 2)
    b = _micro_batch(run, 6, 0, 4, 2)
    again = _micro_batch(run_with([(z + 1, z, text)]), 5, 0, 4, 2)
    assert torch.equal(a[0], z + 1) and torch.equal(a[2], text)
    assert abs(a[1].std().item() - 0.5) < 0.02 and abs(a[1].mean().item()) < 0.02
    assert not torch.equal(a[1], b[1]) and torch.equal(a[1], again[1]) and torch.equal(a[3], again[3])
    with pytest.raises(RuntimeError, match="not 4 pairs of 3 frames"):
        _micro_batch(run_with([(z, z, text)]), 0, 0, 4, 3)
