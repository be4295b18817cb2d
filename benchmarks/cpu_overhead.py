"""Where a SURF call's CPU time goes, and how much of it is SURF's own (issue 13, CPU part).

1. The shipped toy pipeline at its target size (128 px, 17 frames, 25 steps), baseline and SURF
   (``surf_accel.toyworld.surf_config()``): process CPU time of the whole call split into transformer
   forwards, VAE encode/decode, text encoder and the rest (the pipeline's or SURF's own work:
   planning, schedulers, reshift, handoff, callbacks), plus ``torch.profiler``'s top operators of the
   SURF call.
2. The I2V condition: a tiny random-weight Wan I2V pipeline with the request as its optimal size, so
   the refine runs at the preview's size: VAE encodes of the image per SURF call and their CPU time,
   now (one per distinct stage size) against encoding it at every stage as before.

Everything runs in one process on one thread; results go to ``benchmarks/results/cpu_overhead.md``.

    python benchmarks/cpu_overhead.py [--steps 25] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from surf_accel.bench import record as _record
import surf_accel

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_overhead.md"


class CpuTimer:
    """Process CPU seconds spent inside chosen methods, by label."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def wrap(self, obj, name: str, label: str) -> None:
        f = getattr(obj, name)

        def timed(*args, **kwargs):
            t = time.process_time()
            try:
                return f(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.process_time() - t
                self.calls[label] = self.calls.get(label, 0) + 1

        setattr(obj, name, timed)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def toy_split(steps: int) -> tuple[list[str], str]:
    from diffusers import UniPCMultistepScheduler
    from torch.profiler import ProfilerActivity, profile

    from surf_accel.toyworld import (DEFAULT_GUIDANCE, FLOW_SHIFT, NUM_FRAMES, TARGET_SIZE, load_pipeline,
                                     surf_config)

    pipe = load_pipeline(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=FLOW_SHIFT[TARGET_SIZE])
    timer = CpuTimer()
    timer.wrap(pipe.transformer, "forward", "transformer")
    timer.wrap(pipe.vae, "encode", "vae")
    timer.wrap(pipe.vae, "decode", "vae")
    timer.wrap(pipe.text_encoder, "forward", "text encoder")
    kw = dict(prompt="a red circle moving left", height=TARGET_SIZE, width=TARGET_SIZE, num_frames=NUM_FRAMES,
              guidance_scale=DEFAULT_GUIDANCE, output_type="np")
    rows = ["| call | total CPU s | transformer | VAE | text encoder | the rest (pipeline / SURF own) |",
            "|---|---|---|---|---|---|"]
    table = ""
    for label, cfg in (("baseline", None), ("SURF", surf_config())):
        if cfg is not None:
            surf_accel.patch(pipe, cfg)
        pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=3, **kw)  # warm-up
        timer.reset()
        t = time.process_time()
        pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=steps, **kw)
        total = time.process_time() - t
        parts = [timer.seconds.get(k, 0.0) for k in ("transformer", "vae", "text encoder")]
        rest = total - sum(parts)
        rows.append(f"| {label} | {total:.2f} | " + " | ".join(f"{p:.2f} ({100 * p / total:.0f}%)" for p in parts)
                    + f" | {rest:.3f} ({100 * rest / total:.1f}%) |")
        if cfg is not None:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=steps, **kw)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    surf_accel.unpatch(pipe)
    return rows, table


def i2v_condition() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from surf_accel import SurfConfig
    from tests.tiny_pipelines import gen, i2v_kwargs, tiny_wan_i2v

    pipe = tiny_wan_i2v("unipc")
    timer = CpuTimer()
    timer.wrap(pipe.vae, "encode", "encode")
    cfg = SurfConfig(optimal_size="request", preview_steps=8, switch_step=2, refine_steps=2, handoff="latent")
    kw = i2v_kwargs(height=256, width=256, num_frames=17, num_inference_steps=8)
    with surf_accel.patched(pipe, cfg):
        pipe(generator=gen(0), **kw)
        timer.reset()
        t = time.process_time()
        pipe(generator=gen(0), **kw)
        total = time.process_time() - t
    encodes, encode_s = timer.calls.get("encode", 0), timer.seconds.get("encode", 0.0)
    per_size = {}
    for size in (256, 128):  # the image's encode at each stage size, timed alone
        image = pipe.video_processor.preprocess(kw["image"], height=size, width=size)
        video = torch.cat([image.unsqueeze(2), image.new_zeros(1, 3, 16, size, size)], dim=2)
        with torch.no_grad():
            pipe.vae.encode(video)
            t = time.process_time()
            pipe.vae.encode(video)
            per_size[size] = time.process_time() - t
    before = 2 * per_size[256] + per_size[128]  # a condition per stage: preview, low, refine
    after = per_size[256] + per_size[128]
    return ["| I2V condition (tiny random Wan I2V, 256 px, 17 frames, request = optimal size) | value |",
            "|---|---|",
            f"| VAE encodes per SURF call | {encodes} (one per distinct stage size; was 3) |",
            f"| CPU s of those encodes in the call | {encode_s:.3f} of {total:.3f} |",
            f"| condition cost, one per stage (before) vs one per size (now) | {before:.3f} s vs {after:.3f} s "
            f"({before / after:.2f}x) |"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    rows, table = toy_split(a.steps)
    i2v = i2v_condition()
    import os

    _record.write(a.out, "Where a SURF call's CPU time goes (issue 13)", [
        *_record.provenance(argv, " (CPU)"), f"- 1-minute load average after the run: {os.getloadavg()[0]:.2f}",
        "- process CPU time on one thread; 'the rest' is the call's time outside the transformer, VAE and text "
        "encoder: the pipeline's own loop for the baseline, SURF's planning, schedulers, reshift, handoff and "
        "callbacks for SURF", "",
        f"## The toy pipeline at 128 px, 17 frames, {a.steps} steps", "", *rows, "",
        "Top operators of the SURF call by self CPU time (`torch.profiler`):", "", "```", table, "```", "",
        "## Building the I2V condition", "", *i2v])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
