"""``surf-accel demo``: the shipped toy WanPipeline at its target size, baseline vs SURF, on the CPU.

Writes ``baseline.mp4``, ``surf.mp4`` and ``compare.png`` (rows: baseline, SURF, each with its time
and signature; columns: evenly spaced frames) into ``--out`` and prints both times (the medians of
``--repeats`` interleaved runs, wall and process CPU), the speedup and the signature of each video
(colour, shape, direction read by ``surf_accel.metrics`` against the prompt's words). SURF refines
with the shipped trained toy refiner (``--training-free``: with the base model).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from surf_accel import files
from surf_accel.toyworld import (DEFAULT_GUIDANCE, DEFAULT_STEPS, DEMO_PROMPTS, FLOW_SHIFT, NUM_FRAMES, TARGET_SIZE,
                                 load_pipeline, load_refiner, parse_prompt, surf_config)
from surf_accel.toyworld.world import vocabulary

FPS = 8


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("surf_demo"), help="output folder (created)")
    p.add_argument("--prompt", default=DEMO_PROMPTS[0],
                   help="a prompt in the toy world's words: 'a <red|green|blue|yellow> <circle|square> moving "
                        "<left|right|up|down>'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="baseline steps = SURF preview steps")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: the speedup holds on a machine other jobs load; 0: torch's choice)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed baseline/SURF pairs, interleaved; the medians are reported")
    p.add_argument("--training-free", action="store_true",
                   help="refine with the base model itself instead of the shipped trained toy refiner")


def check_prompt(prompt: str) -> None:
    """``SystemExit`` unless the prompt names a colour, a shape and a direction in the world's words only
    (the toy tokenizer maps any other word to <unk>, and the metrics need all three labels)."""
    unknown = sorted(set(prompt.lower().split()) - set(vocabulary()))
    missing = [k for k in ("colour", "shape", "direction") if k not in parse_prompt(prompt)]
    if unknown or missing:
        raise SystemExit(f"surf-accel demo: the toy model knows only the words {vocabulary()}; prompt {prompt!r} "
                         + (f"has unknown words {unknown}" if unknown else f"names no {', '.join(missing)}")
                         + "; e.g. 'a green square moving right'")


def _generate(pipe, prompt: str, seed: int, steps: int):
    """One timed call at the target size: ((T, H, W, 3) frames in [0, 1], wall seconds, process CPU seconds)."""
    t0, c0 = time.perf_counter(), time.process_time()
    frames = pipe(prompt=prompt, height=TARGET_SIZE, width=TARGET_SIZE, num_frames=NUM_FRAMES,
                  num_inference_steps=steps, guidance_scale=DEFAULT_GUIDANCE, output_type="np",
                  generator=torch.Generator().manual_seed(seed)).frames[0]
    return frames, time.perf_counter() - t0, time.process_time() - c0


def compare_image(rows: dict[str, np.ndarray], title: str = "", columns: int = 5, scale: int = 2):
    """Side-by-side PIL image under ``title``: one row per video ((T, H, W, 3) in [0, 1]) labelled with
    its key (lines split at newlines), ``columns`` evenly spaced frames with their indices."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=16)
    small = ImageFont.load_default(size=13)
    label_w, pad, head, index_h = 190, 6, 34 if title else 4, 20
    first = next(iter(rows.values()))
    t, h, w = first.shape[:3]
    idx = np.linspace(0, t - 1, columns).round().astype(int)
    cell_h, cell_w = h * scale, w * scale
    img = Image.new("RGB", (label_w + columns * (cell_w + pad), head + index_h + len(rows) * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 8), title, fill="black", font=font)
    for c, f in enumerate(idx):
        draw.text((label_w + c * (cell_w + pad) + 2, head), f"frame {f}", fill="black", font=small)
    for r, (name, video) in enumerate(rows.items()):
        y = head + index_h + r * (cell_h + pad)
        draw.multiline_text((6, y + 4), name, fill="black", font=small, spacing=4)
        for c, f in enumerate(idx):
            tile = Image.fromarray((np.clip(video[f], 0, 1) * 255).round().astype(np.uint8))
            img.paste(tile.resize((cell_w, cell_h), Image.NEAREST), (label_w + c * (cell_w + pad), y))
    return img


def _signature_short(record: dict) -> str:
    """``red ok / circle ok / left ok``: each label read from the frames and whether the prompt has it."""
    return " / ".join(f"{record[k]} {'ok' if record[f'{k}_ok'] else 'WRONG'}" for k in ("colour", "shape", "direction"))


def _signature_line(name: str, record: dict) -> str:
    marks = {k: "ok" if record[f"{k}_ok"] else "WRONG" for k in ("colour", "shape", "direction")}
    return (f"{name:>8}: colour {record['colour']} ({marks['colour']}), shape {record['shape']} ({marks['shape']}), "
            f"direction {record['direction']} ({marks['direction']}), object present in "
            f"{100 * record['presence']:.0f}% of frames, jitter {record['jitter']:.4f}")


def main(args: argparse.Namespace) -> int:
    from diffusers import UniPCMultistepScheduler

    import surf_accel
    from surf_accel import metrics

    check_prompt(args.prompt)
    if args.repeats < 1:
        raise SystemExit(f"surf-accel demo: --repeats must be at least 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    # The base model renders the target size with the shift it was trained with there.
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config, flow_shift=FLOW_SHIFT[TARGET_SIZE])
    config = surf_config()
    refiner = None if args.training_free else load_refiner(torch.float32)

    # Warm-up (one-time allocator and kernel set-up) so that no timed run pays for it; then baseline and
    # SURF interleaved, so that a change in the machine's load falls on both, and their medians
    _generate(pipe, args.prompt, args.seed, 2)
    wall: dict[str, list[float]] = {"baseline": [], "SURF": []}
    cpu: dict[str, list[float]] = {"baseline": [], "SURF": []}
    for _ in range(args.repeats):
        baseline, w, c = _generate(pipe, args.prompt, args.seed, args.steps)
        wall["baseline"].append(w)
        cpu["baseline"].append(c)
        with surf_accel.patched(pipe, config, refiner=refiner):
            surf, w, c = _generate(pipe, args.prompt, args.seed, args.steps)
        wall["SURF"].append(w)
        cpu["SURF"].append(c)
    t_wall = {k: float(np.median(v)) for k, v in wall.items()}
    t_cpu = {k: float(np.median(v)) for k, v in cpu.items()}

    res = metrics.evaluate([baseline, surf], [args.prompt, args.prompt])["videos"]
    labels = {f"{name}\n{t_cpu[name]:.1f} s CPU, {t_wall[name]:.1f} s wall\n{_signature_short(r)}": video
              for name, r, video in (("baseline", res[0], baseline), ("SURF", res[1], surf))}
    files.write_video(out / "baseline.mp4", baseline, FPS)
    files.write_video(out / "surf.mp4", surf, FPS)
    files.write_image(out / "compare.png", compare_image(labels, title=f"{args.prompt!r}, seed {args.seed}: "
                                                                        f"{t_cpu['baseline'] / t_cpu['SURF']:.2f}x "
                                                                        "(CPU time)"))
    layout = metrics.compare_layout([baseline], [surf])
    print(f"prompt: {args.prompt!r}, seed {args.seed}, {TARGET_SIZE}x{TARGET_SIZE}, {NUM_FRAMES} frames, "
          f"{args.steps} steps, guidance {DEFAULT_GUIDANCE}, {torch.get_num_threads()} CPU thread(s)")
    print(f"SURF setting: {config}")
    print("refiner: " + ("training-free (the base model refines)" if refiner is None else
                         f"the trained toy refiner ({refiner.num_steps} steps, "
                         f"{sum(p.numel() for p in refiner.transformer.parameters()):,} parameters)"))
    print(f"times: median of {args.repeats} interleaved runs each, wall (process CPU)")
    for name in ("baseline", "SURF"):
        print(f"{name + ':':9s} {t_wall[name]:.2f} s ({t_cpu[name]:.2f} s CPU)")
    # the CPU-time ratio holds when other jobs load the machine; the wall-time ratio moves with their load
    print(f"speedup: {t_cpu['baseline'] / t_cpu['SURF']:.2f}x in process CPU time "
          f"({t_wall['baseline'] / t_wall['SURF']:.2f}x in wall time)")
    print("signature (read from the frames by surf_accel.metrics, checked against the prompt):")
    print(_signature_line("baseline", res[0]))
    print(_signature_line("SURF", res[1]))
    print(f"SURF vs baseline, same seed: mean object distance {layout['track_distance']:.3f} frame widths "
          f"(different noise at different sizes: same seed does not mean same video)")
    print(f"wrote {out / 'baseline.mp4'}, {out / 'surf.mp4'}, {out / 'compare.png'}")
    return 0
