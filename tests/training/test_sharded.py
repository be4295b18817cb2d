"""Sharded refiner training (``train.strategy: fsdp``) on 2 processes over gloo on the CPU: torch's
``fully_shard`` runs there, so these runs shard for real (each process holds half of the rows of
every parameter, of AdamW's states and of the EMA).

Oracles: the uninterrupted sharded run (a killed and resumed one must equal it bit for bit), a DDP
run of the same config (the same data and seeds: sharding must not change the maths), the full
weights gathered by the collective at the end of the run (the export assembled in one process from
the shard files must equal them), and the hand-computed row split of ``torch.chunk``.
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from surf_accel import files
from surf_accel.training import config_from_dict, sharding
from surf_accel.training.loop import export_checkpoint, sound_checkpoints
from tests.training.common import TINY_MODEL, tiny_config

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("sharded_worker.py")
BLOCKS = 2
STEP6 = "checkpoints/step-00000006"
# six steps of two micro-batches (whole clips after three one-frame steps), a checkpoint every two;
# max_grad_norm small enough that every step clips (so the norm must be the global one over shards)
TRAIN = {"strategy": "fsdp", "grad_accum": 2, "gradient_checkpointing": True, "max_grad_norm": 0.05,
         "curriculum": [{"steps": 3, "frames": 1}, {"steps": 3}]}


def _config(root: Path, name: str, **train) -> dict:
    return tiny_config(root / name, data={"cache_dir": str(root / "cache")}, export={"dtype": "float32"},
                       model={"config": {**TINY_MODEL, "num_layers": BLOCKS}}, train={**TRAIN, **train})


def _launch(root: Path, runs: list, processes: int = 2) -> list[dict]:
    """The worker's runs on ``processes`` processes (torchrun; plain python for one): each rank's results."""
    job = root / f"job-{runs[0]['name']}.json"
    job.write_text(json.dumps({"out": str(root), "runs": runs}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for r in range(processes):
        (root / f"rank{r}.json").unlink(missing_ok=True)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    if processes == 1:
        launcher = []  # plain python: the run makes its own one-process group
    proc = subprocess.Popen([sys.executable, *launcher, str(WORKER), str(job)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers too
        out, err = proc.communicate()
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(processes)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    results = _launch(root, [
        {"name": "full", "config": _config(root, "full")},
        {"name": "cut", "config": _config(root, "cut"), "stop_after_steps": 3},
        {"name": "resumed", "config": _config(root, "cut")},
        {"name": "ddp", "config": _config(root, "ddp", strategy="ddp")},
        {"name": "bf16", "config": _config(root, "bf16", mixed_precision="bf16")},
        {"name": "fail", "config": _config(root, "fail"), "fail_write": {"rank": 1, "step": 4, "kind": "optimizer"}},
        {"name": "lora", "config": dict(_config(root, "lora", mixed_precision="bf16", lr=1e-2),
                                        model={"init": "lora", "config": {}, "lora": {"rank": 2}})},
    ])
    return root, results


def _shards(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _export(folder) -> dict:
    return load_file(str(Path(folder) / "diffusion_pytorch_model.safetensors"))


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_and_resumed_sharded_run_equals_the_uninterrupted_one(runs):
    root, results = runs
    for r in results:
        full, cut, resumed = r["full"], r["cut"], r["resumed"]
        assert full["finished"] and cut["step"] == 3 and not cut["finished"] and resumed["finished"]
        assert [s for s, _ in resumed["losses"]] == [3, 4, 5, 6]  # from the step-2 checkpoint
        assert [l for _, l in resumed["losses"]] == [l for _, l in full["losses"][2:]]  # bit for bit
    assert _equal(_export(root / "full" / "refiner"), _export(root / "cut" / "refiner"))
    for kind in sharding.KINDS:  # the model, AdamW's states (exp_avg, exp_avg_sq, step) and the EMA at step 6
        for rank in (0, 1):
            name = sharding.shard_file(kind, rank, 2)
            assert _equal(_shards(root / "full" / STEP6 / name)[0], _shards(root / "cut" / STEP6 / name)[0]), name
    moved = _shards(root / "full" / STEP6 / sharding.shard_file("ema", 0, 2))[0]
    start = _shards(root / "full" / "checkpoints/step-00000002" / sharding.shard_file("ema", 0, 2))[0]
    assert not _equal(moved, start)  # the EMA moves between checkpoints


def test_each_process_writes_only_its_rows(runs):
    root, _ = runs
    d = root / "full" / STEP6
    state = json.loads((d / "trainer_state.json").read_text())
    assert state["layout"] == "sharded" and state["world_size"] == 2
    params = dict(_build(root).named_parameters())
    for kind in sharding.KINDS:
        sizes = []
        for rank in (0, 1):
            tensors, meta = _shards(d / sharding.shard_file(kind, rank, 2))
            assert (meta["format"], meta["rank"], meta["world_size"]) == (sharding.FORMAT, str(rank), "2")
            index = json.loads(meta["index"])
            for key, t in tensors.items():
                shape, offset = index[key]
                name = key.split("/", 1)[-1]
                assert shape == list(params[name].shape) or (key.startswith("step/") and shape == [])
                if offset is None:  # AdamW's step: a scalar every process holds
                    assert key.startswith("step/") and t.shape == ()
                    continue
                chunk = math.ceil(shape[0] / 2)  # torch.chunk's split of the rows, by hand
                assert offset == min(rank * chunk, shape[0])
                assert t.shape[0] == min(chunk, shape[0] - offset) and list(t.shape[1:]) == shape[1:]
            sizes.append(sum(t.nbytes for t in tensors.values()))
        whole = sum(p.numel() * 4 for p in params.values()) * (2 if kind == "optimizer" else 1)
        for s in sizes:  # half each, up to the uneven splits (a 1-row scale_shift_table lives on rank 0)
            assert 0.45 * whole < s < 0.55 * whole, (kind, sizes, whole)
        assert abs(sum(sizes) - whole) <= 8 * len(params)  # together the whole, plus the scalar steps


def _build(root: Path):
    from surf_accel.training.model import build_transformer, load_base_pipeline

    cfg = config_from_dict(_config(root, "full"))
    return build_transformer(load_base_pipeline(cfg.base), cfg.model)


def test_export_assembled_in_one_process_equals_the_gathered_one(runs, tmp_path):
    """export_checkpoint puts the shard files together here; the run's own export gathered the shards
    over the processes (model and EMA): the two must agree bit for bit."""
    root, _ = runs
    cfg = config_from_dict(dict(_config(root, "full"), export={"dtype": "float32", "dir": str(tmp_path / "export")}))
    assert _equal(_export(export_checkpoint(cfg)), _export(root / "full" / "refiner"))
    no_ema = config_from_dict(dict(_config(root, "full"), export={"dtype": "float32", "use_ema": False,
                                                                   "dir": str(tmp_path / "raw")}))
    raw = _export(export_checkpoint(no_ema))
    assert not _equal(raw, _export(root / "full" / "refiner"))  # the EMA was applied above
    model = sharding.assemble(root / "full" / STEP6, "model")
    assert _equal(raw, {k: model[k] for k in raw})


def test_sharded_run_matches_ddp(runs):
    """The same config under DDP: losses within 1e-5 relative, weights and EMA within 1e-6 (float32 sums
    in another order: the reduce-scatter of each micro-batch against one all-reduce of both)."""
    root, results = runs
    for r in results:
        fsdp, ddp = [l for _, l in r["full"]["losses"]], [l for _, l in r["ddp"]["losses"]]
        assert fsdp == pytest.approx(ddp, rel=1e-5, abs=0)
    a, b = _export(root / "full" / "refiner"), _export(root / "ddp" / "refiner")
    start = _export(root / "bf16" / "refiner")  # any other run: the weights must have moved far more than 1e-6
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert max((a[k] - start[k]).abs().max().item() for k in a) > 1e-3
    ema_ddp = load_file(str(root / "ddp" / STEP6 / "ema-rank00000-of-00001.safetensors"))
    ema_fsdp = sharding.assemble(root / "full" / STEP6, "ema")
    assert ema_ddp.keys() == ema_fsdp.keys()
    assert all(torch.allclose(ema_ddp[k], ema_fsdp[k], rtol=0, atol=1e-6) for k in ema_ddp)


def test_sharding_halves_what_a_process_holds(runs):
    """Half the bytes of a ddp process each, in one FSDP unit per Wan block plus the root (one unit for
    everything would hold the same bytes but gather the whole model at once)."""
    _, results = runs
    for r in results:
        ddp, fsdp = r["ddp"]["held"], r["full"]["held"]
        for k in ("parameters", "optimizer"):
            assert 0.45 < fsdp[k] / ddp[k] < 0.55, (k, fsdp, ddp)
        assert r["full"]["units"] == ["FSDPWanTransformer3DModel"] + ["FSDPWanTransformerBlock"] * BLOCKS
        assert r["ddp"]["units"] == []
    root = runs[0]
    starts = [json.loads(line) for line in (root / "full" / "log.jsonl").read_text().splitlines()]
    assert [r["strategy"] for r in starts if r.get("event") == "start"][0] == "fsdp"


def test_gradient_checkpointing_recomputes_every_block_in_backward(runs):
    """With train.gradient_checkpointing each block's forward runs again inside the backward pass: once
    per block, micro-batch and step (it would be 0 if checkpointing were off)."""
    _, results = runs
    for r in results:
        calls = r["full"]["calls"]
        assert sum(c["in_backward"] for c in calls) == BLOCKS * 2 * 6
        assert sum(not c["in_backward"] for c in calls) == BLOCKS * 2 * 6


def test_bf16_policy(runs):
    """bf16: the blocks compute with bf16 weights and inputs; the sharded master weights, AdamW's states
    and the EMA are float32; the losses follow the float32 run's within 2%."""
    root, results = runs
    for r in results:
        calls = r["bf16"]["calls"]
        assert calls and all(c["weight_dtype"] == "torch.bfloat16" for c in calls)
        assert all(c["input_dtype"] == "torch.bfloat16" for c in calls)
        assert all(c["weight_dtype"] == "torch.float32" for c in r["full"]["calls"])
        assert [l for _, l in r["bf16"]["losses"]] == pytest.approx([l for _, l in r["full"]["losses"]], rel=0.02)
        assert [l for _, l in r["bf16"]["losses"]] != [l for _, l in r["full"]["losses"]]
    for kind in sharding.KINDS:
        for rank in (0, 1):
            tensors, _ = _shards(root / "bf16" / STEP6 / sharding.shard_file(kind, rank, 2))
            assert {t.dtype for t in tensors.values()} == {torch.float32}, kind
    policy = sharding.mixed_precision_policy("bf16")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)


def test_a_failed_shard_write_leaves_the_earlier_checkpoints(runs):
    """Rank 1 cannot write its optimizer shard of step 4 (disk full): both processes raise naming the
    checkpoint, step 2 stays, no partial folder is left."""
    root, results = runs
    r0, r1 = results[0]["fail"]["error"], results[1]["fail"]["error"]
    assert "could not write checkpoint" in r0 and "step-00000004" in r0 and "process(es) [1] failed" in r0
    assert "step-00000004: disk full" in r1
    assert sorted(os.listdir(root / "fail" / "checkpoints")) == ["step-00000002"]


def test_resume_with_another_number_of_processes_is_refused(runs, tmp_path):
    root, _ = runs
    shutil.copytree(root / "full", tmp_path / "one")
    cfg = _config(tmp_path, "one")
    cfg["data"]["cache_dir"] = str(root / "cache")
    (result,) = _launch(tmp_path, [{"name": "one", "config": cfg}], processes=1)
    assert "ResumeMismatch" in result["one"]["error"]
    assert "saved by 2 process(es)" in result["one"]["error"] and "this run has 1" in result["one"]["error"]


def test_a_missing_or_damaged_shard_file_is_named_and_skipped(runs, tmp_path):
    root, _ = runs
    shutil.copytree(root / "full" / "checkpoints", tmp_path / "checkpoints")
    (tmp_path / "checkpoints" / "step-00000006" / sharding.shard_file("optimizer", 1, 2)).unlink()
    ema = tmp_path / "checkpoints" / "step-00000004" / sharding.shard_file("ema", 0, 2)
    ema.write_bytes(ema.read_bytes()[:100])
    sound, damaged = sound_checkpoints(tmp_path)
    assert [d.name for d, _ in sound] == ["step-00000002"]
    assert any("step-00000006/optimizer-rank00001-of-00002.safetensors is missing" in p for p in damaged)
    assert any("step-00000004/ema-rank00000-of-00002.safetensors" in p for p in damaged)


def test_fp16_is_refused_under_fsdp(tmp_path):
    from surf_accel.training.config import ConfigError
    from surf_accel.training.loop import train

    with pytest.raises(ConfigError, match="fp16.*fsdp.*use bf16"):
        train(config_from_dict(_config(tmp_path, "fp16", mixed_precision="fp16")), progress=False)


def _write_rows(folder: Path, rank: int, world: int, rows: torch.Tensor, offset: int, shape: list) -> None:
    meta = {"format": sharding.FORMAT, "rank": str(rank), "world_size": str(world),
            "index": json.dumps({"w": [shape, offset]})}
    files.write_safetensors(folder / sharding.shard_file("model", rank, world), {"w": rows}, meta)


def test_assemble_refuses_gaps_overlaps_and_missing_ranks(tmp_path):
    full = torch.arange(15.0).reshape(5, 3)
    _write_rows(tmp_path, 0, 2, full[:3], 0, [5, 3])
    _write_rows(tmp_path, 1, 2, full[3:], 3, [5, 3])
    assert torch.equal(sharding.assemble(tmp_path, "model")["w"], full)
    _write_rows(tmp_path, 1, 2, full[2:], 2, [5, 3])  # overlaps rank 0's last row
    with pytest.raises(ValueError, match="rows start at 2"):
        sharding.assemble(tmp_path, "model")
    _write_rows(tmp_path, 1, 2, full[4:], 4, [5, 3])  # row 3 held by nobody
    with pytest.raises(ValueError, match="rows start at 4"):
        sharding.assemble(tmp_path, "model")
    (tmp_path / sharding.shard_file("model", 1, 2)).unlink()
    with pytest.raises(ValueError, match=r"ranks \[0\] of 2"):
        sharding.assemble(tmp_path, "model")
    assert sharding.layout_problem(tmp_path).endswith("model-rank00001-of-00002.safetensors is missing")


def test_lora_adapters_shard_with_their_frozen_base(runs, tmp_path):
    """init 'lora' (frozen base weights and trainable adapters in the same units) in bf16: AdamW's and the
    EMA's shards hold the adapters only, the loss goes down, and the export assembled from the shards
    (adapters merged) equals the gathered one."""
    root, results = runs
    for r in results:
        losses = [l for _, l in r["lora"]["losses"]]
        assert r["lora"]["finished"] and losses[-1] < 0.7 * losses[0], losses
    for kind in ("optimizer", "ema"):
        keys = _shards(root / "lora" / STEP6 / sharding.shard_file(kind, 0, 2))[0].keys()
        assert keys and all("lora" in k for k in keys), kind
    cfg = dict(_config(root, "lora", mixed_precision="bf16", lr=1e-2),
               model={"init": "lora", "config": {}, "lora": {"rank": 2}},
               export={"dtype": "float32", "dir": str(tmp_path / "export")})
    assembled = _export(export_checkpoint(config_from_dict(cfg)))
    assert not any("lora" in k for k in assembled) and _equal(assembled, _export(root / "lora" / "refiner"))


@pytest.mark.gpu
def test_sharded_bf16_run_on_cuda(tmp_path):
    """The same runs on CUDA over nccl in bf16, on 2 processes where there are 2 GPUs (else 1: nothing is
    sharded, but the same FSDP2 path runs). CUDA kernels need not be bitwise reproducible, so the resumed
    run is compared within 1e-3; the export assembled from the shard files must still equal the gathered one."""
    n = min(2, torch.cuda.device_count())
    results = _launch(tmp_path, [
        {"name": "full", "config": _config(tmp_path, "full", mixed_precision="bf16")},
        {"name": "cut", "config": _config(tmp_path, "cut", mixed_precision="bf16"), "stop_after_steps": 3},
        {"name": "resumed", "config": _config(tmp_path, "cut", mixed_precision="bf16")},
        {"name": "ddp", "config": _config(tmp_path, "ddp", mixed_precision="bf16", strategy="ddp")},
    ], processes=n)
    for r in results:
        full = [l for _, l in r["full"]["losses"]]
        assert r["resumed"]["finished"] and [l for _, l in r["resumed"]["losses"]] == pytest.approx(full[2:], rel=1e-3)
        assert full == pytest.approx([l for _, l in r["ddp"]["losses"]], rel=0.02)
        assert all(c["weight_dtype"] == "torch.bfloat16" for c in r["full"]["calls"])
        if n == 2:
            assert 0.45 < r["full"]["held"]["parameters"] / r["ddp"]["held"]["parameters"] < 0.55
    cfg = config_from_dict(dict(_config(tmp_path, "full", mixed_precision="bf16"),
                                export={"dtype": "float32", "dir": str(tmp_path / "export")}))
    assert _equal(_export(export_checkpoint(cfg)), _export(tmp_path / "full" / "refiner"))
