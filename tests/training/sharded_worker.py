"""One process of a test launch of refiner training: ``torchrun --nproc_per_node N sharded_worker.py JOB``
(or plain ``python`` for one process). ``JOB`` is a JSON file ``{"out": folder, "runs": [...]}``; each
run is ``{"name", "config" (tiny_config dict), "stop_after_steps", "fail_write"}`` and is trained in
turn in this process. ``fail_write: {"rank", "step", "kind"}`` makes that rank's shard file of that
kind fail to write (as a full disk would) at that step's checkpoint.

Each process writes ``<out>/rank<R>.json``: per run its losses, step, export folder or error, the
bytes of parameters and optimiser states it held at the end, its FSDP units, and what every ``WanTransformerBlock``
forward saw (inside a backward pass or not; the dtype of its weights and of its input).
"""

import errno
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule
from accelerate.state import AcceleratorState, PartialState

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from diffusers.models.transformers.transformer_wan import WanTransformerBlock  # noqa: E402

from surf_accel import files  # noqa: E402
from surf_accel.training import config_from_dict, loop, sharding  # noqa: E402

torch.set_num_threads(1)
calls: list[dict] = []
captured: dict = {}

block_forward = WanTransformerBlock.forward


def counting_forward(self, hidden_states, *args, **kwargs):
    if torch.is_grad_enabled():  # training forwards, not validation
        calls.append({"in_backward": torch._C._current_graph_task_id() != -1,
                      "weight_dtype": str(self.attn1.to_q.weight.dtype), "input_dtype": str(hidden_states.dtype)})
    return block_forward(self, hidden_states, *args, **kwargs)


WanTransformerBlock.forward = counting_forward

prepare_model = loop._prepare_model


def capturing_prepare(cfg, accelerator, model):
    captured["model"], captured["opt"], ema, state = prepare_model(cfg, accelerator, model)
    return captured["model"], captured["opt"], ema, state


loop._prepare_model = capturing_prepare
if "WORLD_SIZE" in os.environ:  # several train() calls in one launch: keep torchrun's process group between them
    PartialState.destroy_process_group = lambda self, group=None: None


def held_bytes() -> dict:
    """Bytes of this process's parameters and optimiser states (its rows of sharded ones)."""
    params = sum(sharding.local(p).nbytes for p in captured["model"].parameters())
    states = sum(sharding.local(v).nbytes for s in captured["opt"].state.values() for v in s.values())
    return {"parameters": params, "optimizer": states}


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    results = {}
    write = files.write_safetensors
    for run in job["runs"]:
        calls.clear()
        fail = run.get("fail_write")

        def failing_write(path, *a, fail=fail, **k):
            p = Path(path)
            if rank() == fail["rank"] and p.parent.name == f"step-{fail['step']:08d}.partial" \
                    and p.name.startswith(fail["kind"]):
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(path, *a, **k)

        files.write_safetensors = failing_write if fail else write
        cfg = config_from_dict(run["config"])
        try:
            res = loop.train(cfg, stop_after_steps=run.get("stop_after_steps"), progress=False)
            out = {"losses": res.losses, "step": res.step, "finished": res.finished, "export_dir": res.export_dir}
        except Exception as e:  # noqa: BLE001  (the test reads what each process raised)
            out = {"error": f"{type(e).__name__}: {e}"}
            AcceleratorState._reset_state()  # as train() does at its end: the next run may use other settings
        out["calls"] = list(calls)
        out["held"] = held_bytes() if "model" in captured else None
        # the FSDP units: the sharded modules, by class name (fully_shard makes FSDP<name> classes)
        out["units"] = sorted(type(m).__name__ for m in captured["model"].modules()
                              if isinstance(m, FSDPModule)) if "model" in captured else None
        captured.clear()
        results[run["name"]] = out
    files.write_json(Path(job["out"]) / f"rank{rank()}.json", results)


if __name__ == "__main__":
    main(sys.argv[1])
