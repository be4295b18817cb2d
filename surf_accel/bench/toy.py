"""What every toy-world benchmark shares (the signature table, the stack table): a *run* (size,
steps, SURF config, solver), generating a batch of prompts with CPU and wall time, and per-seed
shards.

Speed is process CPU time on one intra-op thread (``time.process_time``), so that a shard running
beside another process on a small machine still measures its own work. Every run of one seed draws
its first noise from the same generator, so a SURF run starts from exactly the optimal-size base
run's noise and a plain run at the target size from the target-size base run's. Each seed runs in its
own process (``--seeds S --json PART``); ``--combine PART...`` pools the shards into the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

import surf_accel
from surf_accel import files
from surf_accel.config import SurfConfig
from surf_accel.toyworld import (DEFAULT_GUIDANCE, DEFAULT_STEPS, EVAL_PROMPTS, FLOW_SHIFT, NUM_FRAMES, PREVIEW_SIZE,
                                 TEACACHE_FIT, load_pipeline)


@dataclass(frozen=True)
class Run:
    name: str
    size: int                       # generation size (px) of a plain run; SURF always outputs TARGET_SIZE
    steps: int
    config: Optional[SurfConfig] = None
    reference: Optional[str] = None  # same-noise run for the layout distance
    solver: str = "unipc"            # the pipeline's scheduler for this run
    refiner: Optional[str] = None    # SURF refining with "trained" (toyworld.load_refiner) or "sibling"
                                     # (toyworld.load_sibling, training-free); None: the base model
    cache: Optional[str] = None      # a `--cache` form on the pipeline's transformer (the preview's model)


def upsample(frames: np.ndarray, size: int) -> np.ndarray:
    """(B, T, h, w, 3) -> (B, T, size, size, 3), bilinear."""
    if frames.shape[2] == size:
        return frames
    b, t, h, w, c = frames.shape
    x = torch.from_numpy(frames).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1).reshape(b, t, size, size, c).clamp(0, 1).numpy()


def generate(pipe, unipc_config, run: Run, prompts, seed: int, guidance: float, refiners: Optional[dict] = None):
    """(B, T, H, W, 3) frames in [0, 1], CPU seconds and wall seconds for one batch of prompts;
    ``unipc_config``: the shipped pipeline's scheduler config; ``refiners``: ``run.refiner`` name -> model."""
    # diffusers and the registry (every accelerator) load when a benchmark runs, not when the CLI builds
    # its parser from this module
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    from surf_accel.registry import install_cache, remove_caches

    # Plain runs use the shift the model was trained with at their size; SURF runs set their own shifts.
    shift = FLOW_SHIFT[run.size]
    if run.solver == "euler":
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    else:
        pipe.scheduler = UniPCMultistepScheduler.from_config(unipc_config, flow_shift=shift)
    c0, t0 = time.process_time(), time.perf_counter()
    patch = surf_accel.patched(pipe, run.config, refiner=(refiners or {})[run.refiner] if run.refiner else None)
    if run.cache:
        install_cache(pipe, run.cache, teacache_fit=TEACACHE_FIT)
    try:
        with patch if run.config is not None else contextlib.nullcontext():
            frames = pipe(prompt=list(prompts), height=run.size, width=run.size, num_frames=NUM_FRAMES,
                          num_inference_steps=run.steps, guidance_scale=guidance, output_type="np",
                          generator=torch.Generator().manual_seed(seed)).frames
    finally:
        if run.cache:
            remove_caches(pipe.transformer)
    return frames, time.process_time() - c0, time.perf_counter() - t0


def setup(a) -> tuple:
    """(pipeline, its scheduler config, prompts) for a shard: ``a.threads`` intra-op threads, the
    shipped toy pipeline (or ``a.pipeline``) in float32, every ``a.prompt_stride``-th evaluation
    prompt, and one small warm-up call so that no row pays for first-call costs."""
    torch.set_num_threads(a.threads)
    prompts = list(EVAL_PROMPTS[:: a.prompt_stride])
    pipe = load_pipeline(torch.float32, path=a.pipeline)
    pipe.set_progress_bar_config(disable=True)
    unipc_config = pipe.scheduler.config
    generate(pipe, unipc_config, Run("warm-up", PREVIEW_SIZE, 2), prompts[:1], 0, a.guidance)
    return pipe, unipc_config, prompts


def fmt(mean, lo, hi, scale=100.0, digits=1) -> str:
    """``mean [lo, hi]`` of a bootstrap interval, scaled (percent by default)."""
    return f"{scale * mean:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def add_shard_arguments(p: argparse.ArgumentParser, results: Path) -> None:
    """The arguments every sharded toy benchmark takes: generation settings, threads, and the shard /
    combine / output files."""
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps of every run (SURF: its preview's)")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="classifier-free guidance scale")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="noise seeds; each row generates every prompt once per seed")
    p.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    p.add_argument("--pipeline", type=Path, default=None, help="pipeline folder (default: the shipped one)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (speed is this process's CPU time)")
    p.add_argument("--json", type=Path, default=None, help="write this shard's raw results here (no table)")
    p.add_argument("--combine", type=Path, nargs="+", default=None, help="shards' JSON files -> the table")
    p.add_argument("--out", type=Path, default=results, help=f"the table (default: {results})")


def run_sharded(a, argv, measure: Callable, combine: Callable) -> int:
    """``--combine`` shards into the table, or measure one shard: to ``--json`` or straight to the table."""
    if a.combine:
        combine([json.loads(f.read_text()) for f in a.combine], a.out, argv)
        return 0
    part = measure(a)
    if a.json:
        files.write_json(a.json, part)
    else:
        combine([part], a.out, argv)
    return 0
