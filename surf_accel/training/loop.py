"""The training loop on Hugging Face accelerate: ``train(config)``.

One call runs (or resumes) a whole run: load the base pipeline, make the missing shards of the pair
store (every process its share, ``pair_store``), build the refiner transformer, then optimiser steps
until ``train.max_steps``, with checkpoints every ``checkpoint.every`` steps, validation every
``validation.every`` steps and the export at the end. Launch several processes with
``accelerate launch`` or ``torchrun`` (DDP; FSDP with ``train.strategy: fsdp``); on CPU the
processes talk over gloo.

Reproducibility: the pairs of step ``k`` are a function of ``k`` (``pair_store.MicroBatches``: seeded
epochs), and ``s`` and the latent noise of step ``k`` come from a generator seeded by ``(seed, k,
micro-batch, process)``, never from a global RNG, so a run resumed
from its step-``j`` checkpoint repeats steps ``j+1..`` exactly as the uninterrupted run took them.

Checkpoints (``<output_dir>/checkpoints/step-XXXXXXXX``): the model's weights, AdamW's states and the
EMA as safetensors shard files (``sharding``: every process's rows under ``train.strategy: fsdp``, the
main process's whole state under ``ddp``; nothing pickled: no random state is needed, every draw is
seeded by the step) and ``trainer_state.json`` (step, config fingerprint, the config), written last,
all into ``step-XXXXXXXX.partial``, fsynced and then renamed: a checkpoint folder is
complete or absent. A resume takes the newest checkpoint whose files read back (a damaged one is
named in a warning and skipped); a failed save raises naming the folder and the reason (a full disk
called one) and leaves the earlier checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from safetensors import safe_open
from tqdm.auto import tqdm

from surf_accel import files, registry
from surf_accel.training import objective, sharding
from surf_accel.training.base_pairs import make_base_pairs
from surf_accel.training.config import ConfigError, Phase, RefinerTrainingConfig
from surf_accel.training.data import data_card, encode_captions, load_sources, write_data_card
from surf_accel.training.ema import EMA
from surf_accel.training.export import export_refiner
from surf_accel.training.model import (build_transformer, count_parameters, load_base_pipeline, trainable_parameters,
                                       unwrap)
from surf_accel.training.pair_store import MicroBatches, PairDataset, PairStore, loader
from surf_accel.training.pairs import check_sizes, make_pairs, module_id, vae_id
from surf_accel.training.validate import run_validation, surf_config_for

logger = logging.getLogger("surf_accel.training")

STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"step-(\d+)")


class ResumeMismatch(ValueError):
    """The run in ``output_dir`` was started with a config that differs where it matters."""


@dataclass
class TrainResult:
    step: int  # optimiser steps done
    finished: bool  # reached train.max_steps (and exported)
    losses: list = field(default_factory=list)  # (step, mean loss over processes) of this call
    validation: list = field(default_factory=list)  # (step, metrics)
    export_dir: Optional[str] = None
    seconds: float = 0.0
    is_main: bool = True


# ---------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if _CHECKPOINT.fullmatch(p.name) and (p / STATE_NAME).is_file()]
    return sorted(done, key=lambda p: int(_CHECKPOINT.fullmatch(p.name).group(1)))


def _read_state(d: Path) -> dict:
    """A checkpoint's ``trainer_state.json``; ``ValueError`` naming the file when it does not read back."""
    path = d / STATE_NAME
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} does not read back ({e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"{path} has no step")
    return state


def _damage(d: Path) -> Optional[str]:
    """Which file of checkpoint ``d`` does not read back (truncated or garbled) or is missing, or ``None``:
    each safetensors file's header covers the file, and every process's shard files are there. A cheap
    check of every file, before any model is built."""
    problem = sharding.layout_problem(d)
    if problem is not None:
        return problem
    for f in sorted(d.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
            return f"{f} does not read back ({e})"
    if not sharding.shard_files(d):
        return f"{d} holds no model shard files"
    return None


def sound_checkpoints(output_dir: str | os.PathLike) -> tuple[list[tuple[Path, dict]], list[str]]:
    """The complete checkpoints whose files read back, newest first, each with its trainer state, and
    what is wrong with each of the others (naming the file)."""
    sound, damaged = [], []
    for d in reversed(checkpoint_dirs(output_dir)):
        try:
            state = _read_state(d)
        except ValueError as e:
            damaged.append(str(e))
            continue
        problem = _damage(d)
        if problem is None:
            sound.append((d, state))
        else:
            damaged.append(problem)
    return sound, damaged


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} -> {b!r}"]


def check_resume(cfg: RefinerTrainingConfig, state: dict) -> None:
    if state.get("fingerprint") == cfg.fingerprint():
        return
    old = state.get("fingerprint_dict") or {}
    changes = _diff(old, cfg.fingerprint_dict())
    raise ResumeMismatch(
        f"{cfg.output_dir} holds a run started with another config; changed: " + "; ".join(changes[:8])
        + (f" (+{len(changes) - 8} more)" if len(changes) > 8 else "")
        + ". Use the original config, a new output_dir, or --no-resume to start over there "
        f"(only {', '.join(cfg.RESUMABLE_CHANGES)} may change between resumes)")


def _lr_lambda(cfg: RefinerTrainingConfig):
    t = cfg.train

    def f(step: int) -> float:
        if step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.lr_schedule == "constant":
            return 1.0
        p = min(1.0, (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))
    return f


def _make_accelerator(cfg: RefinerTrainingConfig):
    """The run's accelerate ``Accelerator`` (processes, device, autocast). Under ``fsdp`` it is the same
    one: accelerate's own FSDP runs on accelerators only (on CPU it falls back to DDP), so
    ``sharding`` shards the model with torch's ``fully_shard`` on CPU and GPU alike."""
    if cfg.train.strategy == "fsdp" and cfg.train.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision 'fp16' with train.strategy 'fsdp' is not supported (no sharded "
                          "gradient scaler); use bf16")
    return Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
                       project_dir=cfg.output_dir)


def _seed(*parts: int) -> int:
    x = 0
    for p in parts:
        x = (x * 1_000_003 + int(p)) % (2 ** 62)
    return x


# ---------------------------------------------------------------------------- data
def prepare_data(cfg: RefinerTrainingConfig, pipe, adapter, *, rank: int = 0, processes: int = 1,
                 barrier: Callable[[], None] = lambda: None, progress: bool = False) -> dict:
    """The pair stores (``pair_store``), each process making its share of the missing shards, the data
    card beside the clip pairs (``data.write_data_card``), and the held-out pairs: ``{"train":
    PairDataset (clip pairs, then base pairs), "val": {"z_lr", "hr", "text"} or None, "stores":
    [PairStore]}``. ``barrier`` waits for every process (once every shard is on disk,
    and after the main process's ``store.json``)."""
    check_sizes(pipe, cfg.data.height, cfg.data.width, cfg.data.num_frames, cfg.pairs, pipe.transformer.config.patch_size)
    train_src, val_src = load_sources(cfg.data, cfg.seed)
    length = cfg.data.max_sequence_length
    recipe = {"data": {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in ("cache_dir",)},
              "pairs": {k: v for k, v in dataclasses.asdict(cfg.pairs).items() if k not in ("latent_noise", "shard_size")}}
    # what every store's pairs and embeddings are made with
    text = {"encoder": module_id(pipe.text_encoder), "dtype": str(pipe.text_encoder.dtype), "max_sequence_length": length}
    models = {"vae": vae_id(pipe), "text": text}
    plans = [_clip_store(cfg, pipe, adapter, train_src, "pairs", cfg.seed, recipe, models, keep_hr=False)]
    if cfg.base_pairs.num:
        plans.append(_base_pair_store(cfg, pipe, adapter, train_src.captions, models))
    if len(val_src):
        plans.append(_clip_store(cfg, pipe, adapter, val_src, "val", cfg.seed + 1, recipe, models, keep_hr=True))
    for store, make, store_recipe in plans:
        store.make(make, lambda captions: encode_captions(pipe, captions, length), store_recipe, rank=rank,
                   processes=processes, progress=progress)
    for store, _, _ in plans:
        store.wait()
    barrier()
    if rank == 0:
        for store, _, store_recipe in plans:
            logger.info("pair store %s", store.finish(store_recipe).parent)
        for path in write_data_card(plans[0][0].folder, data_card(train_src, val_src, cfg.data)):
            logger.info("wrote %s", path)
    barrier()
    stores = [p[0] for p in plans]
    val = None
    if len(val_src):
        v = stores[-1].read_all(length)
        val = {"z_lr": v["z_lr"], "hr": v["hr"], "text": v["text"]}
        stores = stores[:-1]
    return {"train": PairDataset(stores, length), "val": val, "stores": stores}


def _clip_store(cfg: RefinerTrainingConfig, pipe, adapter, clips, name: str, seed: int, recipe: dict, models: dict,
                *, keep_hr: bool):
    """``(store, make_shard, recipe)`` of the pairs of ``clips`` (``pairs.make_pairs``), keyed by the
    ``models`` that make them (VAE, text encoder), the recipe and the seed; ``keep_hr`` also stores the HR
    clips (validation)."""
    key = {**models, "recipe": recipe, "seed": seed, "n": len(clips), "hr": keep_hr}

    def make(start: int, stop: int):
        out = make_pairs(pipe, adapter, clips, cfg.pairs, seed, start=start, stop=stop)
        if keep_hr:
            out["hr"] = clips.batch(start, stop)
        return out, clips.captions[start:stop]

    return PairStore.under(cfg.cache_dir, name, key, len(clips), cfg.pairs.shard_size), make, recipe


def _base_pair_store(cfg: RefinerTrainingConfig, pipe, adapter, train_captions, models: dict):
    """``(store, make_shard, recipe)`` of the ``base_pairs.num`` pairs made by the base model
    (``base_pairs.make_base_pairs``): pair ``i`` from training caption ``i mod len`` and seed
    ``base_pairs.seed + i``; keyed by the base transformer too (it makes them)."""
    bp = cfg.base_pairs
    prompts = [train_captions[i % len(train_captions)] for i in range(bp.num)]
    surf = surf_config_for(cfg, bp.surf)
    d = cfg.data
    recipe = {"base_pairs": dataclasses.asdict(bp), "surf": dataclasses.asdict(surf), "prompts": prompts,
              "size": [d.height, d.width, d.num_frames], "handoff": [cfg.pairs.handoff, cfg.pairs.latent_resize]}
    key = {**models, "transformer": [module_id(pipe.transformer), str(pipe.transformer.dtype)], "recipe": recipe}

    def make(start: int, stop: int):
        out = make_base_pairs(pipe, adapter, surf, prompts[start:stop], [bp.seed + i for i in range(start, stop)],
                              height=d.height, width=d.width, num_frames=d.num_frames,
                              num_inference_steps=bp.num_inference_steps, guidance_scale=bp.guidance_scale,
                              pairs_cfg=cfg.pairs)
        return out, prompts[start:stop]

    return PairStore.under(cfg.cache_dir, "base-pairs", key, bp.num, cfg.pairs.shard_size), make, recipe


def latent_frames_for(frames: int, pipe) -> int:
    return (frames - 1) // int(pipe.vae_scale_factor_temporal) + 1


# ---------------------------------------------------------------------------- training
@dataclass
class _Run:
    """The pipeline, model, optimiser and data one ``train`` call works with (made by ``_set_up``)."""

    cfg: RefinerTrainingConfig
    accelerator: Accelerator
    pipe: Any
    adapter: Any
    num_train_timesteps: int
    model: torch.nn.Module  # as accelerate prepared it (DDP/FSDP wrapper)
    inner: torch.nn.Module  # the transformer under the wrapper
    opt: torch.optim.Optimizer
    ema: Optional[EMA]
    data: dict  # prepare_data's output
    state: sharding.Sharded  # what a checkpoint holds of model and optimiser on this process
    batches: Optional[Iterator] = None  # this process's micro-batches (z_hr, z_lr, text), from the resumed step

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def log_path(self) -> Path:
        return Path(self.cfg.output_dir) / "log.jsonl"


def train(cfg: RefinerTrainingConfig, *, resume: bool = True, stop_after_steps: Optional[int] = None,
          max_minutes: Optional[float] = None, progress: bool = True) -> TrainResult:
    """Run (or resume) the training ``cfg`` describes.

    ``resume=False`` deletes earlier checkpoints in ``output_dir/checkpoints`` and starts at step 0.
    ``stop_after_steps`` / ``max_minutes`` end this call early (as an interruption would: no
    checkpoint beyond the periodic ones, no export); calling again resumes.
    """
    t_start = time.time()
    cfg.check_paths()
    accelerator = _make_accelerator(cfg)
    _warn_if_unsharded(cfg, accelerator)
    checkpoints = _resume_points(cfg, accelerator, resume)
    run = _set_up(cfg, accelerator, progress)
    step = _resume(run, checkpoints)
    run.batches = _batches(run, step)
    result = TrainResult(step=step, finished=False, is_main=run.main)
    _log_start(run, step)
    bar = _progress_bar(run, step, progress)
    with registry.training_windows(run.inner, cfg.model.window):
        step = _train_steps(run, step, result, bar, t_start, stop_after_steps, max_minutes)
    if bar is not None:
        bar.close()
    run.batches = None  # ends the loader's workers
    result.step = step
    if step >= cfg.train.max_steps:
        result.finished = True
        result.export_dir = _export(run, step)
    result.seconds = time.time() - t_start
    _end_training(accelerator)
    return result


def _warn_if_unsharded(cfg: RefinerTrainingConfig, accelerator: Accelerator) -> None:
    """Warn when ``train.strategy`` asks for FSDP in a single process: there is nothing to shard over."""
    if cfg.train.strategy == "fsdp" and accelerator.num_processes == 1:
        logger.warning("train.strategy is 'fsdp' in one process: nothing is sharded (launch several processes "
                       "with torchrun or accelerate launch)")


def _resume_points(cfg: RefinerTrainingConfig, accelerator: Accelerator,
                   resume: bool) -> list[tuple[Path, dict]]:
    """The checkpoints to resume from, newest first, each with its trainer state (empty: start at step 0).

    ``resume=False`` deletes the earlier checkpoints first. A damaged checkpoint is named in a warning
    and skipped; ``ValueError`` naming them where every checkpoint is damaged. Raises ``ResumeMismatch``
    for a run started with another config.
    """
    out_dir = Path(cfg.output_dir)
    if not resume and accelerator.is_main_process and (out_dir / "checkpoints").is_dir():
        shutil.rmtree(out_dir / "checkpoints")
    accelerator.wait_for_everyone()
    if not resume:
        return []
    sound, damaged = sound_checkpoints(out_dir)
    if damaged and not sound:
        raise ValueError(f"no checkpoint in {out_dir / 'checkpoints'} reads back: " + "; ".join(damaged)
                         + ". Remove the damaged ones (or pass --no-resume to start over)")
    if damaged and accelerator.is_main_process:
        logger.warning("skipping damaged checkpoint(s): %s", "; ".join(damaged))
    if sound:  # before any expensive work
        check_resume(cfg, sound[0][1])
        if cfg.train.strategy == "fsdp":
            _check_world_size(*sound[0], accelerator.num_processes)
    return sound


def _set_up(cfg: RefinerTrainingConfig, accelerator: Accelerator, progress: bool) -> _Run:
    """The base pipeline, the refiner transformer, the pair store, the optimiser and the EMA."""
    pipe = load_base_pipeline(cfg.base, getattr(torch, cfg.base_dtype))
    adapter = registry.family_named("wan").adapter
    T = int(pipe.scheduler.config.num_train_timesteps)
    model = build_transformer(pipe, cfg.model)
    _check_rope(model, pipe, cfg)
    with _pipeline_on(pipe, accelerator.device):
        data = prepare_data(cfg, pipe, adapter, rank=accelerator.process_index, processes=accelerator.num_processes,
                            barrier=accelerator.wait_for_everyone, progress=progress and accelerator.is_main_process)
    model, opt, ema, state = _prepare_model(cfg, accelerator, model)
    return _Run(cfg, accelerator, pipe, adapter, T, model, unwrap(model), opt, ema, data, state)


@contextlib.contextmanager
def _pipeline_on(pipe, device: torch.device) -> Iterator[None]:
    """The base pipeline on this process's ``device`` while it makes pairs, back on the CPU afterwards:
    the accelerator's memory is the refiner's during training."""
    if device.type == "cpu":
        yield
        return
    pipe.to(device)
    try:
        yield
    finally:
        pipe.to("cpu")
        torch.cuda.empty_cache()


def _prepare_model(cfg: RefinerTrainingConfig, accelerator: Accelerator,
                   model: torch.nn.Module) -> tuple[torch.nn.Module, torch.optim.Optimizer, Optional[EMA],
                                                    sharding.Sharded]:
    """Gradient checkpointing (diffusers checkpoints each block's call), AdamW over the trainable parameters
    and the EMA (of each process's rows under ``fsdp``). ``ddp``: model and optimiser wrapped by
    accelerate; ``fsdp``: the model sharded (``sharding.shard_model``) before the optimiser is made over
    its sharded parameters. Returned with them: the ``sharding.Sharded`` view checkpoints save and load."""
    if cfg.train.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.train.strategy == "fsdp":
        sharding.ensure_process_group(accelerator.device)
        model = sharding.shard_model(model, accelerator.device, cfg.train.mixed_precision)
        opt = _adamw(cfg, model)
        state = sharding.Sharded(model, opt, accelerator.process_index, accelerator.num_processes)
    else:
        model, opt = accelerator.prepare(model, _adamw(cfg, model))
        # every process holds the same whole state: the main process writes it, every process reads it
        state = sharding.Sharded(unwrap(model), opt, 0, 1, accelerator.is_main_process)
    trained = sharding.local_tensors(trainable_parameters(unwrap(model)))
    ema = EMA(trained.items(), cfg.train.ema_decay) if cfg.train.ema_decay else None
    return model, opt, ema, state


def _adamw(cfg: RefinerTrainingConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    return torch.optim.AdamW(list(trainable_parameters(model).values()), lr=cfg.train.lr, betas=cfg.train.betas,
                             weight_decay=cfg.train.weight_decay)


def _resume(run: _Run, checkpoints: list[tuple[Path, dict]]) -> int:
    """Load the newest of ``checkpoints`` that loads on every process (model, optimiser and EMA from the
    shard files, ``sharding.load``; a later one loaded over a failed one replaces all of it); the step
    to go on from (0 without checkpoints). ``ResumeMismatch`` for a sharded checkpoint of another
    number of processes."""
    failed = []
    for ckpt, state in checkpoints:
        if run.cfg.train.strategy == "fsdp":
            _check_world_size(ckpt, state, run.state.world_size)
        e = _on_every_process(run.accelerator, lambda ckpt=ckpt: sharding.load(ckpt, run.state, run.ema))
        if e is not None:
            failed.append(f"{ckpt}: {type(e).__name__}: {e}")
            if run.main:
                logger.warning("checkpoint %s does not load (%s); trying the one before", ckpt, e)
            continue
        if run.main:
            logger.info("resumed from %s (step %d)", ckpt, state["step"])
        return int(state["step"])
    if failed:
        raise ValueError("no checkpoint loads: " + "; ".join(failed) + ". Pass --no-resume to start over")
    return 0


def _check_world_size(ckpt: Path, state: dict, world_size: int) -> None:
    """``ResumeMismatch`` unless the sharded checkpoint ``ckpt`` was saved by ``world_size`` processes."""
    saved = state.get("world_size")
    if state.get("layout") != "sharded":
        raise ResumeMismatch(f"{ckpt} is not a sharded checkpoint (it was not written with train.strategy 'fsdp')")
    if saved != world_size:
        raise ResumeMismatch(
            f"{ckpt} was saved by {saved} process(es) and this run has {world_size}: resume it with {saved} (the "
            "effective batch and each process's random draws depend on the number of processes), or start over "
            "with --no-resume")


def _on_every_process(accelerator: Accelerator, fn) -> Optional[Exception]:
    """Run ``fn()`` on every process and agree on the outcome: ``None`` where it succeeded everywhere, else
    this process's exception or one naming the processes that failed (so that all go on alike)."""
    error = None
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (torch, safetensors, accelerate and the file system each raise their own)
        error = e
    flags = accelerator.gather(torch.tensor([float(error is not None)], device=accelerator.device)).cpu()
    if error is None and flags.any():
        error = RuntimeError(f"process(es) {flags.nonzero().flatten().tolist()} failed")
    return error


def _log_start(run: _Run, step: int) -> None:
    """The ``start`` record of ``log.jsonl`` (main process): processes, precision, data and model sizes."""
    if run.main:
        a = run.accelerator
        _append(run.log_path, {"event": "start", "step": step, "processes": a.num_processes,
                               "distributed_type": str(a.distributed_type), "strategy": run.cfg.train.strategy,
                               "mixed_precision": a.mixed_precision,
                               "pairs": len(run.data["train"]), "parameters": count_parameters(run.inner),
                               "trainable": count_parameters(run.inner, True)})


def _progress_bar(run: _Run, step: int, progress: bool) -> Optional[tqdm]:
    """With ``progress``, the main process's bar over ``train.max_steps`` (the model's size logged); else ``None``."""
    if not (progress and run.main):
        return None
    bar = tqdm(total=run.cfg.train.max_steps, initial=step, desc="train-refiner", dynamic_ncols=True)
    logger.info("refiner %s params (%s trainable), %d pairs, %d process(es)", f"{count_parameters(run.inner):,}",
                f"{count_parameters(run.inner, True):,}", len(run.data["train"]), run.accelerator.num_processes)
    return bar


def _train_steps(run: _Run, step: int, result: TrainResult, bar: Optional[tqdm], t_start: float,
                 stop_after_steps: Optional[int], max_minutes: Optional[float]) -> int:
    """Optimiser steps from ``step`` to ``train.max_steps`` or an early stop, each reported, checkpointed
    and validated on schedule (losses and metrics into ``result``); the step reached."""
    cfg = run.cfg
    phases = cfg.train.phases(cfg.data.num_frames)
    bounds = [sum(p.steps for p in phases[:i + 1]) for i in range(len(phases))]
    # the learning rate is a function of the step, set before each step: nothing to checkpoint, and not
    # accelerate's prepared scheduler, which steps once per process per optimiser step
    lr_at = _lr_lambda(cfg)
    smooth = None
    this_call = 0
    while step < cfg.train.max_steps:
        phase = phases[next(i for i, b in enumerate(bounds) if step < b)]
        t0 = time.time()
        mean_loss = _optimizer_step(run, step, phase, cfg.train.lr * lr_at(step))
        step += 1
        this_call += 1
        result.losses.append((step, mean_loss))
        dt = time.time() - t0
        smooth = mean_loss if smooth is None else 0.9 * smooth + 0.1 * mean_loss
        _report_step(run, bar, step, mean_loss, smooth, phase, dt, t_start)
        _checkpoint_and_validate(run, step, result, bar)
        if _stop_early(run, this_call, t_start, stop_after_steps, max_minutes) and step < cfg.train.max_steps:
            break
    return step


def _optimizer_step(run: _Run, step: int, phase: Phase, lr: float) -> float:
    """Optimiser step ``step`` at learning rate ``lr`` over ``train.grad_accum`` micro-batches of
    ``phase``'s clips (EMA updated); the loss, mean over micro-batches and processes."""
    cfg, accelerator, model = run.cfg, run.accelerator, run.model
    lt = latent_frames_for(phase.frames, run.pipe)
    model.train()
    for group in run.opt.param_groups:
        group["lr"] = lr
    loss_sum = torch.zeros(())
    for micro in range(cfg.train.grad_accum):
        z_hr, z_lr, text, s = _micro_batch(run, step, micro, phase.batch_size, lt)
        dev = accelerator.device
        # FSDP reduce-scatters after every micro-batch, so that the accumulated gradients stay sharded
        sync = micro == cfg.train.grad_accum - 1 or cfg.train.strategy == "fsdp"
        with (contextlib.nullcontext() if sync else accelerator.no_sync(model)):
            with accelerator.autocast():
                loss = objective.flow_loss(model, z_hr.to(dev), z_lr.to(dev), text.to(dev), s.to(dev),
                                           run.num_train_timesteps)
            accelerator.backward(loss / cfg.train.grad_accum)
        loss_sum += loss.detach().float().cpu()
    if cfg.train.max_grad_norm:
        accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.train.max_grad_norm)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(sharding.local_tensors(trainable_parameters(run.inner)).items(), step)
    return accelerator.reduce((loss_sum / cfg.train.grad_accum).to(accelerator.device), "mean").item()


def _micro_batch(run: _Run, step: int, micro: int, batch_size: int,
                 lt: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(z_hr, z_lr, text, s)`` of micro-batch ``micro`` of step ``step`` on this process: the next of
    ``run.batches`` (``batch_size`` pairs cut to ``lt`` latent frames), ``z_lr`` degraded and ``s`` drawn from
    a generator seeded by ``(seed, step, micro, process)``."""
    cfg = run.cfg
    z_hr, z_lr, text = next(run.batches)
    if z_hr.shape[0] != batch_size or z_hr.shape[2] != lt:
        raise RuntimeError(f"step {step}: the loader gave {tuple(z_hr.shape)}, not {batch_size} pairs of {lt} frames")
    g = torch.Generator().manual_seed(_seed(cfg.seed, step, micro, run.accelerator.process_index))
    lo, hi = cfg.pairs.latent_noise
    std = lo + (hi - lo) * torch.rand(batch_size, generator=g)
    z_lr = objective.degrade_latent(z_lr, std, g)
    s = objective.sample_s(batch_size, cfg.objective, cfg.model.num_steps, g)
    return z_hr, z_lr, text, s


def _batches(run: _Run, step: int) -> Iterator:
    """This process's micro-batches from optimiser step ``step`` on (``pair_store.MicroBatches``)."""
    cfg, a = run.cfg, run.accelerator
    phases = [(p.steps, p.batch_size, latent_frames_for(p.frames, run.pipe))
              for p in cfg.train.phases(cfg.data.num_frames)]
    order = MicroBatches(len(run.data["train"]), cfg.seed, phases, cfg.train.grad_accum, a.num_processes,
                         a.process_index, step)
    return iter(loader(run.data["train"], order, cfg.train.loader_workers))


def _report_step(run: _Run, bar: Optional[tqdm], step: int, mean_loss: float, smooth: float, phase: Phase,
                 dt: float, t_start: float) -> None:
    """Step ``step``'s loss and speed on the bar and, every ``log_every`` steps and at step 1, in ``log.jsonl``."""
    clips = phase.batch_size * run.cfg.train.grad_accum * run.accelerator.num_processes
    if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{smooth:.4f}", clips_s=f"{clips / dt:.2f}", frames=phase.frames)
    if run.main and (step % run.cfg.log_every == 0 or step == 1):
        _append(run.log_path, {"step": step, "loss": mean_loss, "loss_smooth": smooth,
                               "lr": run.opt.param_groups[0]["lr"], "frames": phase.frames,
                               "clips_per_s": clips / dt, "step_s": dt, "elapsed_s": time.time() - t_start})


def _checkpoint_and_validate(run: _Run, step: int, result: TrainResult, bar: Optional[tqdm]) -> None:
    """After step ``step``: the state checkpoint every ``checkpoint.every`` steps and the validation every
    ``validation.every`` steps (both at ``train.max_steps``), its metrics into ``result`` and ``log.jsonl``."""
    cfg = run.cfg
    if step % cfg.checkpoint.every == 0 or step == cfg.train.max_steps:
        save_checkpoint(run.accelerator, cfg, step, run.state, run.ema)
    v = cfg.validation
    if (v.every and step % v.every == 0) or step == cfg.train.max_steps:
        metrics = _validate(run.accelerator, run.pipe, run.adapter, run.model, run.ema, cfg, run.data.get("val"),
                            run.num_train_timesteps)
        if metrics is not None:
            result.validation.append((step, metrics))
            _append(run.log_path, {"step": step, "validation": metrics})
            if bar is not None:
                bar.write(f"step {step} validation: {json.dumps(metrics)}")


def _stop_early(run: _Run, this_call: int, t_start: float, stop_after_steps: Optional[int],
                max_minutes: Optional[float]) -> bool:
    """Whether ``stop_after_steps`` steps of this call or ``max_minutes`` have passed (on any process)."""
    stop = (stop_after_steps is not None and this_call >= stop_after_steps) or (
        max_minutes is not None and time.time() - t_start > 60 * max_minutes)
    if max_minutes is not None and run.accelerator.num_processes > 1:  # clocks differ: stop where any process would
        stop = run.accelerator.reduce(torch.tensor(float(stop), device=run.accelerator.device), "sum").item() > 0
    return stop


def _export(run: _Run, step: int) -> Optional[str]:
    """Export the trained refiner (EMA applied with ``export.use_ema``); its folder on the main process."""
    full = _full_model(run.accelerator, run.model, run.pipe, run.cfg, run.ema if run.cfg.export.use_ema else None)
    export_dir = str(export_refiner_now(full, run.cfg, step)) if run.main else None
    run.accelerator.wait_for_everyone()
    return export_dir


def _end_training(accelerator: Accelerator) -> None:
    """End accelerate's run and drop its per-process state."""
    accelerator.end_training()
    # accelerate keeps one AcceleratorState per process (mixed precision, plugins): drop it so that a
    # next train() call in this process (tests, notebooks) may use other settings; the process group
    # (PartialState) stays
    AcceleratorState._reset_state()


def _check_rope(model, pipe, cfg: RefinerTrainingConfig) -> None:
    c = model.config
    vs = int(pipe.vae_scale_factor_spatial)
    grid = (latent_frames_for(cfg.data.num_frames, pipe) // c.patch_size[0], cfg.data.height // vs // c.patch_size[1],
            cfg.data.width // vs // c.patch_size[2])
    if max(grid) >= c.rope_max_seq_len:
        raise ValueError(f"the refiner's patch grid {grid} at {cfg.data.height}x{cfg.data.width} needs "
                         f"rope_max_seq_len > {max(grid)} (it is {c.rope_max_seq_len}); set model.config.rope_max_seq_len")


def _append(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def save_checkpoint(accelerator, cfg: RefinerTrainingConfig, step: int, sharded: sharding.Sharded,
                    ema: Optional[EMA]) -> Path:
    """The training state ``sharded`` and ``ema`` into ``step-N.partial`` (their shard files: every
    process's under ``fsdp``, the main process's whole state under ``ddp``), then ``trainer_state.json``
    written last by the main process, all fsynced, the folder renamed to ``step-N``; then keeps the
    newest ``checkpoint.keep``. Every process learns
    whether all succeeded: on any failure each raises ``files.WriteError`` naming the checkpoint and the
    reason (the partial folder removed, the earlier checkpoints untouched)."""
    d = Path(cfg.output_dir) / "checkpoints" / f"step-{step:08d}"
    partial = d.with_name(d.name + ".partial")  # the same name on every process: each writes its own files
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()

    def write_states():
        sharding.save(partial, sharded, ema)

    def write_marker():
        if accelerator.is_main_process:
            state = {"step": step, "fingerprint": cfg.fingerprint(), "fingerprint_dict": cfg.fingerprint_dict(),
                     "config": cfg.to_dict(), "world_size": sharded.world_size,
                     "layout": "sharded" if cfg.train.strategy == "fsdp" else "whole"}
            files.write_json(partial / STATE_NAME, state, indent=1)
            files.sync_folder(partial)

    e = _on_every_process(accelerator, write_states) or _on_every_process(accelerator, write_marker)
    if e is not None:
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise files.WriteError(getattr(e, "errno", None) or errno.EIO,
                               f"could not write checkpoint {d}: {files.reason(e, partial.parent)}; the earlier "
                               "checkpoints are unchanged") from e
    if accelerator.is_main_process:
        shutil.rmtree(d, ignore_errors=True)  # the same step saved by an earlier run that got no further
        os.replace(partial, d)
        files.sync_folder(d.parent)
        for old in checkpoint_dirs(cfg.output_dir)[:-cfg.checkpoint.keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return d


def _full_model(accelerator, model, pipe, cfg: RefinerTrainingConfig, ema: Optional[EMA]):
    """On the main process a plain copy of the trained transformer (``None`` elsewhere) with the EMA
    applied, loaded into a fresh model of the config's architecture (LoRA adapters included; merged on
    export). Under ``fsdp`` the weights and the EMA's shards are gathered first: a collective, every
    process calls this."""
    main = accelerator.is_main_process
    if cfg.train.strategy == "fsdp":
        state = sharding.gather(model.state_dict(), main)
        averages = None if ema is None else sharding.gather(sharding.ema_tensors(model, ema), main)
    else:
        state = accelerator.get_state_dict(model)
        averages = None if ema is None else ema.shadow
    if not main:
        return None
    with torch.random.fork_rng():  # building the model seeds torch: keep the training's global RNG
        m = build_transformer(pipe, cfg.model)
    m.load_state_dict(state, strict=True)
    if averages is not None:
        EMA(averages.items(), ema.decay).copy_to(m)
    return m.eval()


def _validate(accelerator, pipe, adapter, model, ema, cfg, val, T) -> Optional[dict]:
    m = _full_model(accelerator, model, pipe, cfg, ema)
    metrics = None
    if m is not None:
        t0 = time.time()
        metrics = run_validation(pipe, adapter, m, cfg, val, num_train_timesteps=T)
        metrics["seconds"] = round(time.time() - t0, 2)
    accelerator.wait_for_everyone()
    return metrics


def export_checkpoint(cfg: RefinerTrainingConfig, checkpoint: Optional[str | os.PathLike] = None) -> Path:
    """Export a checkpoint (default: the newest in ``output_dir``) without training, in this one process:
    the model's weights assembled from the shard files, with the EMA applied when the run keeps one and ``export.use_ema`` is set. For a run stopped
    before ``max_steps``."""
    cfg.check_paths()
    if checkpoint is not None:
        d = Path(checkpoint)
        state = _read_state(d)
        problem = _damage(d)
        if problem is not None:
            raise ValueError(problem)
    else:
        sound, damaged = sound_checkpoints(cfg.output_dir)
        if not sound:
            raise FileNotFoundError(f"no complete checkpoint in {cfg.output_dir}/checkpoints to export"
                                    + (f" ({'; '.join(damaged)})" if damaged else ""))
        if damaged:
            logger.warning("skipping damaged checkpoint(s): %s", "; ".join(damaged))
        d, state = sound[0]
    check_resume(cfg, state)
    pipe = load_base_pipeline(cfg.base, getattr(torch, cfg.base_dtype))
    model = build_transformer(pipe, cfg.model)
    missing, unexpected = model.load_state_dict(sharding.assemble(d, "model"), strict=False)
    if unexpected or [k for k in missing if k in trainable_parameters(model)]:
        raise ValueError(f"checkpoint {d} does not match this config's model ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected weights)")
    if cfg.train.ema_decay and cfg.export.use_ema and "ema" in sharding.shard_files(d):
        ema = EMA(trainable_parameters(model).items(), cfg.train.ema_decay)
        ema.load_tensors(sharding.assemble(d, "ema"), str(d))
        ema.copy_to(model)
    return export_refiner_now(model.eval(), cfg, int(state["step"]))


def export_refiner_now(model, cfg: RefinerTrainingConfig, step: int) -> Path:
    export_refiner(model, cfg, step=step)
    return cfg.export_dir
