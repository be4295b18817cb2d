"""Signature table of SPEC section 6 on the shipped toy WanPipeline (issue 5): speed and signature of
the base model, the usual shortcuts and SURF variants, all producing 128 px (the toy's target) video.

Rows: the base model at the target size (speed reference) and at its optimal size (the signature
SURF aims to keep); naive low resolution (32 px from the start, frames upsampled); 50% and 30% of the
steps; SURF in the toy setting (``surf_accel.toyworld.surf_config()``) and one change at a time:
paper reshifting, predicted re-noise, pixel handoff, temporal windows in the refiner, other refine
start levels and switch steps. Every run of one seed draws its first noise from the same generator,
so a SURF run starts from exactly the optimal-size base run's noise (its first ``switch_step`` steps
are that run's) and a fewer-steps run from the target-size base run's: the "layout distance" column
is the mean distance (frame fractions) between the object tracks of a run and of that same-noise
base run. Times are per video, measured in this one process; speedup is against the first row.

    python benchmarks/signature.py [--seeds 0] [--prompt-stride 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import _record
import surf_accel
from surf_accel import metrics
from surf_accel.config import SurfConfig
from surf_accel.toyworld import (DEFAULT_GUIDANCE, DEFAULT_STEPS, EVAL_PROMPTS, FLOW_SHIFT, NUM_FRAMES, OPTIMAL_SIZE,
                                 PREVIEW_SIZE, TARGET_SIZE, load_pipeline, surf_config)

RESULTS = Path(__file__).resolve().parent / "results" / "signature.md"
TEMPORAL_WINDOW = (2, 16, 16)  # 2 of the 5 latent frames, whole 16x16 token frames: the paper's temporal windows


@dataclass(frozen=True)
class Run:
    name: str
    size: int                       # generation size (px) of a plain run; SURF always outputs TARGET_SIZE
    steps: int
    config: Optional[SurfConfig] = None
    reference: Optional[str] = None  # same-noise base run for the layout distance


def runs(steps: int) -> list[Run]:
    base, opt = f"base {TARGET_SIZE} px", f"base {OPTIMAL_SIZE} px (optimal)"
    toy = surf_config()
    half, third = max(1, round(steps * 0.5)), max(1, round(steps * 0.3))
    return [
        Run(base, TARGET_SIZE, steps),
        Run(opt, OPTIMAL_SIZE, steps),
        Run(f"naive {PREVIEW_SIZE} px from the start, upsampled", PREVIEW_SIZE, steps),
        Run(f"50% steps ({half})", TARGET_SIZE, half, reference=base),
        Run(f"30% steps ({third})", TARGET_SIZE, third, reference=base),
        Run("SURF toy setting", TARGET_SIZE, steps, toy, opt),
        Run("SURF, paper reshift", TARGET_SIZE, steps, toy.replace(reshift="paper"), opt),
        Run("SURF, predicted re-noise", TARGET_SIZE, steps, toy.replace(renoise="predicted"), opt),
        Run("SURF, pixel handoff", TARGET_SIZE, steps, toy.replace(handoff="pixel"), opt),
        Run(f"SURF, refiner with windows {TEMPORAL_WINDOW}", TARGET_SIZE, steps, toy.replace(window=TEMPORAL_WINDOW), opt),
        Run("SURF, refine_start 0.3", TARGET_SIZE, steps, toy.replace(refine_start=0.3), opt),
        Run("SURF, refine_start 0.7", TARGET_SIZE, steps, toy.replace(refine_start=0.7), opt),
        Run("SURF, switch_step 3", TARGET_SIZE, steps, toy.replace(switch_step=3), opt),
        Run("SURF, switch_step 10", TARGET_SIZE, steps, toy.replace(switch_step=10), opt),
        Run("SURF, no refine (32 px preview, upsampled)", TARGET_SIZE, steps, toy.replace(refine_steps=0), opt),
    ]


def upsample(frames: np.ndarray, size: int) -> np.ndarray:
    """(B, T, h, w, 3) -> (B, T, size, size, 3), bilinear."""
    if frames.shape[2] == size:
        return frames
    b, t, h, w, c = frames.shape
    x = torch.from_numpy(frames).reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return y.permute(0, 2, 3, 1).reshape(b, t, size, size, c).clamp(0, 1).numpy()


def generate(pipe, run: Run, prompts, seed: int, guidance: float):
    """(B, T, H, W, 3) frames in [0, 1] and seconds for one batch of prompts."""
    from diffusers import UniPCMultistepScheduler

    # Plain runs use the shift the model was trained with at their size; SURF runs set their own shifts.
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config,
                                                         flow_shift=FLOW_SHIFT[run.size])
    t0 = time.perf_counter()
    with surf_accel.patched(pipe, run.config) if run.config is not None else contextlib.nullcontext():
        frames = pipe(prompt=list(prompts), height=run.size, width=run.size, num_frames=NUM_FRAMES,
                      num_inference_steps=run.steps, guidance_scale=guidance, output_type="np",
                      generator=torch.Generator().manual_seed(seed)).frames
    return frames, time.perf_counter() - t0


HEADER = ("| run | s/video | speedup | colour % | shape % | direction % | all three % | presence | jitter | "
          "layout distance (same-noise base) | direction agrees with it % |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--prompt-stride", type=int, default=1, help="every k-th prompt of the fixed set of 32")
    p.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    p.add_argument("--only", nargs="*", default=None, help="run only rows whose name starts with one of these")
    p.add_argument("--pipeline", type=Path, default=None, help="pipeline folder (default: the shipped one)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    prompts = list(EVAL_PROMPTS[:: a.prompt_stride])
    pipe = load_pipeline(torch.float32, path=a.pipeline)
    pipe.set_progress_bar_config(disable=True)
    generate(pipe, Run("warm-up", PREVIEW_SIZE, 2), prompts[:1], 0, a.guidance)

    all_runs = runs(a.steps)
    base_name = all_runs[0].name
    if a.only:
        # The speed reference and each kept row's same-noise reference always run.
        keep = {r.name for r in all_runs if any(r.name.startswith(o) for o in a.only)} | {base_name}
        keep |= {r.reference for r in all_runs if r.name in keep and r.reference}
        all_runs = [r for r in all_runs if r.name in keep]
    videos: dict[str, list[np.ndarray]] = {}
    seconds: dict[str, float] = {}
    lines = []
    for run in all_runs:
        vids, secs = [], 0.0
        for seed in a.seeds:
            for i in range(0, len(prompts), a.batch):
                out, dt = generate(pipe, run, prompts[i:i + a.batch], seed, a.guidance)
                vids.extend(list(upsample(out, TARGET_SIZE) if run.size == PREVIEW_SIZE else out))
                secs += dt
        videos[run.name], seconds[run.name] = vids, secs / len(vids)
        ps = prompts * len(a.seeds)
        s = metrics.evaluate(vids, ps)["summary"]
        dist = agree = "-"
        if run.reference is not None:
            lay = metrics.compare_layout(videos[run.reference], vids)
            dist, agree = f"{lay['track_distance']:.3f} ({run.reference})", f"{100 * lay['direction_agreement']:.1f}"
        lines.append(f"| {run.name} | {seconds[run.name]:.2f} | {seconds[base_name] / seconds[run.name]:.2f}x | "
                     f"{100 * s['colour_acc']:.1f} | {100 * s['shape_acc']:.1f} | {100 * s['direction_acc']:.1f} | "
                     f"{100 * s['all_acc']:.1f} | {s['presence']:.2f} | {s['jitter']:.4f} | {dist} | {agree} |")
        print(lines[-1], flush=True)
    _record.write(a.out, "Signature table on the toy world (issue 5, SPEC section 6)", [
        *_record.provenance(argv, " (CPU)"),
        f"- model: {a.pipeline or 'the shipped toy WanPipeline'}; {len(prompts)} prompts (every {a.prompt_stride}. of "
        f"the fixed set of 32) x seeds {a.seeds}, {NUM_FRAMES} frames, {a.steps} UniPC steps, guidance {a.guidance}, "
        f"{a.batch} prompts per call",
        f"- SURF toy setting: `{surf_config()}`",
        "- layout distance: mean centroid distance (frame fractions) to the run that starts from the same noise; "
        "SURF's first steps are the optimal-size base run's, so its distance to that run is the signature kept",
        "", HEADER, *lines])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
