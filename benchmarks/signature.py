"""Signature table of docs/design.md 6 on the shipped toy WanPipeline: speed and signature of the base
model, the usual shortcuts and SURF variants, all producing 128 px (the toy's target) video, over the
fixed set of 32 prompts x several seeds, with 95% bootstrap intervals.

Rows: the base model at the target size (speed reference) and at its optimal size (the signature
SURF aims to keep); naive low resolution (32 px from the start, frames upsampled); 30% of the steps
with UniPC and with Euler; SURF in the toy setting (``surf_accel.toyworld.surf_config()``) and one
change at a time: every reshift mode, predicted re-noise, pixel handoff, temporal refine windows,
refine start, switch step, no refine, refine without guidance, a sparse preview (two sliding-tile
patterns); the trained toy refiner (``surf_accel.toyworld.load_refiner``) at its 10 steps, at 5 and 8,
and without windows; the toy sibling (``surf_accel.toyworld.load_sibling``) refining training-free,
windowed, dense, with TeaCache on the preview, and from earlier refine starts. The "layout distance" column is the mean distance (frame fractions) between
the object tracks of a run and of its same-noise base run (a SURF run's first ``switch_step`` steps
are the optimal-size base run's; a fewer-steps run starts from the target-size base run's noise).
Timing, seeds and shards: ``surf_accel.bench.toy``; wall time and the load average are recorded too.
Accuracies and distances are pooled over every video with bootstrap intervals over videos, speedups
are the mean of the per-seed ratios with their range.

    python benchmarks/signature.py --seeds 0 --json /tmp/sig0.json   # one per seed, in parallel
    python benchmarks/signature.py --combine /tmp/sig0.json /tmp/sig1.json /tmp/sig2.json
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from surf_accel import metrics
from surf_accel.bench import record as _record
from surf_accel.bench.toy import Run, add_shard_arguments, fmt, generate, run_sharded, setup, upsample
from surf_accel.integrations.accelerators.sparse_attention import SparsePattern
from surf_accel.toyworld import (NUM_FRAMES, OPTIMAL_SIZE, PREVIEW_SIZE, REFINE_WINDOW, TARGET_SIZE, load_refiner,
                                 load_sibling, surf_config)

RESULTS = Path(__file__).resolve().parent / "results" / "signature.md"


def runs(steps: int) -> list[Run]:
    base, opt = f"base {TARGET_SIZE} px", f"base {OPTIMAL_SIZE} px (optimal)"
    toy = surf_config()
    third = max(1, round(steps * 0.3))
    surf = [("SURF toy setting", toy)]
    surf += [(f"SURF, reshift {m}", toy.replace(reshift=m)) for m in ("consistent", "paper", "additive_low")
             if m != toy.reshift]
    surf += [
        ("SURF, predicted re-noise", toy.replace(renoise="predicted")),
        ("SURF, pixel handoff", toy.replace(handoff="pixel")),
        (f"SURF, refine windows {REFINE_WINDOW}" if toy.window is None else "SURF, dense refine attention",
         toy.replace(window=None if toy.window else REFINE_WINDOW)),
        ("SURF, refine_start 0.5", toy.replace(refine_start=0.5)),
        ("SURF, refine_guidance 1 (no CFG in the refine)", toy.replace(refine_guidance=1.0)),
        ("SURF, switch_step 3", toy.replace(switch_step=3)),
        ("SURF, switch_step 10", toy.replace(switch_step=10)),
        ("SURF, no refine (32 px preview, upsampled)", toy.replace(refine_steps=0, window=None)),
    ]
    # the sparse preview (docs/design.md 4.1) on the toy's preview grids, (5, 8, 8) tokens at 64 px and
    # (5, 4, 4) at 32 px: tiles of 2x2 tokens with a 3x3x3-tile window (34% / 60% of the keys, then the
    # first frame), and 4x4 tiles with a temporal 3-tile window (15% / 60%)
    surf += [(f"SURF + sparse preview, tile {tile}, window {win}, 1 global frame",
              toy.replace(preview_attention=SparsePattern(tile, win, 1)))
             for tile, win in (((1, 2, 2), (3, 3, 3)), ((1, 4, 4), (3, 1, 1)))]
    # the trained refiner (its own 10 steps unless refine_steps says otherwise), windowed as trained
    trained = [("SURF, trained refiner", toy), ("SURF, trained refiner, 5 steps", toy.replace(refine_steps=5)),
               ("SURF, trained refiner, 8 steps", toy.replace(refine_steps=8)),
               ("SURF, trained refiner, dense attention", toy.replace(window=None))]
    # the toy sibling (a ~1/5-size transformer of the same family) refining training-free, as Wan2.1-1.3B
    # would refine Wan2.1-14B: the toy setting, dense, with TeaCache on the preview, and earlier refine starts
    # (refine_start 0.7 as the base's refine, then the earlier starts that transformer_refine_start's default
    # follows)
    at = toy.replace(transformer_refine_start=0.7)
    sibling = [("SURF, sibling refine", at, None),
               ("SURF, sibling refine, dense attention", at.replace(window=None), None),
               ("SURF, sibling refine + TeaCache 0.15", at, "teacache:0.15"),
               ("SURF, sibling refine, refine_start 0.5", toy.replace(transformer_refine_start=0.5), None),
               ("SURF, sibling refine, refine_start 0.3", toy.replace(transformer_refine_start=0.3), None)]
    return [
        Run(base, TARGET_SIZE, steps),
        Run(opt, OPTIMAL_SIZE, steps),
        Run(f"naive {PREVIEW_SIZE} px from the start, upsampled", PREVIEW_SIZE, steps),
        Run(f"30% steps ({third}), UniPC", TARGET_SIZE, third, reference=base),
        Run(f"30% steps ({third}), Euler", TARGET_SIZE, third, reference=base, solver="euler"),
        *(Run(name, TARGET_SIZE, steps, cfg, opt) for name, cfg in surf),
        *(Run(name, TARGET_SIZE, steps, cfg, opt, refiner="trained") for name, cfg in trained),
        *(Run(name, TARGET_SIZE, steps, cfg, opt, refiner="sibling", cache=cache) for name, cfg, cache in sibling),
    ]


def measure(a) -> dict:
    """Every row for ``a.seeds``: per-video labels and distances, CPU and wall seconds per row."""
    pipe, unipc_config, prompts = setup(a)
    refiners = {"trained": load_refiner(torch.float32), "sibling": load_sibling(torch.float32)}
    all_runs = runs(a.steps)
    if a.only:
        keep = {r.name for r in all_runs if any(r.name.startswith(o) for o in a.only)} | {all_runs[0].name}
        keep |= {r.reference for r in all_runs if r.name in keep and r.reference}
        all_runs = [r for r in all_runs if r.name in keep]
    videos: dict[str, list[np.ndarray]] = {}
    rows = {}
    load_before = os.getloadavg()
    for run in all_runs:
        vids, cpu, wall = [], 0.0, 0.0
        for seed in a.seeds:
            for i in range(0, len(prompts), a.batch):
                out, c, w = generate(pipe, unipc_config, run, prompts[i:i + a.batch], seed, a.guidance, refiners)
                vids.extend(list(upsample(out, TARGET_SIZE) if run.size == PREVIEW_SIZE else out))
                cpu, wall = cpu + c, wall + w
        videos[run.name] = vids
        ev = metrics.evaluate(vids, prompts * len(a.seeds))["videos"]
        row = {k: [bool(r[f"{k}_ok"]) for r in ev] for k in ("colour", "shape", "direction", "all")}
        row.update(cpu=cpu, wall=wall, n=len(vids), reference=run.reference, config=str(run.config or ""))
        if run.reference is not None:
            lay = metrics.compare_layout(videos[run.reference], vids)
            row["distance"] = lay["track_distances"]
        rows[run.name] = row
        print(f"{run.name}: {cpu / len(vids):.2f} CPU s/video, colour {np.mean(row['colour']):.3f}, direction "
              f"{np.mean(row['direction']):.3f}, load {os.getloadavg()[0]:.2f}", flush=True)
    return {"seeds": list(a.seeds), "rows": rows, "order": [r.name for r in all_runs], "prompts": len(prompts),
            "load": [load_before, os.getloadavg()], "provenance": _record.provenance(None, " (CPU)"),
            "steps": a.steps, "guidance": a.guidance, "batch": a.batch, "toy": str(surf_config())}


def combine(parts: list[dict], out: Path, argv) -> None:
    order = parts[0]["order"]
    base = order[0]
    lines = []
    for name in order:
        rows = [p["rows"][name] for p in parts]
        pooled = {k: sum((r[k] for r in rows), []) for k in ("colour", "shape", "direction", "all")}
        ratios = [p["rows"][base]["cpu"] / p["rows"][base]["n"] / (r["cpu"] / r["n"]) for p, r in zip(parts, rows)]
        cpu = sum(r["cpu"] for r in rows) / sum(r["n"] for r in rows)
        dist = "-"
        if rows[0]["reference"] is not None:
            d = metrics.bootstrap_ci(sum((r["distance"] for r in rows), []))
            dist = f"{fmt(*d, scale=1.0, digits=3)} ({rows[0]['reference']})"
        lines.append(f"| {name} | {cpu:.2f} | {np.mean(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
                     + " | ".join(fmt(*metrics.bootstrap_ci(pooled[k])) for k in ("colour", "shape", "direction",
                                                                                  "all"))
                     + f" | {dist} |")
    p0 = parts[0]
    seeds = sorted(s for p in parts for s in p["seeds"])
    loads = ", ".join(f"seed(s) {p['seeds']}: {p['load'][0][0]:.2f} -> {p['load'][1][0]:.2f}" for p in parts)
    _record.write(out, "Signature table on the toy world (docs/design.md 6)", [
        *_record.provenance(argv, " (CPU)"),
        "- shards (one process per seed, 1 torch thread each): "
        + "; ".join(p["provenance"][2].removeprefix("- command: ") for p in parts),
        f"- 1-minute load average at the start -> end of each shard: {loads}",
        f"- model: the shipped toy WanPipeline; {p0['prompts']} prompts (every colour x shape x direction) x seeds "
        f"{seeds} = {p0['prompts'] * len(seeds)} videos per row, {NUM_FRAMES} frames, {p0['steps']} steps (UniPC "
        f"unless the row says Euler), guidance {p0['guidance']}, {p0['batch']} prompts per call",
        f"- SURF toy setting: `{p0['toy']}`; each SURF row changes one field",
        "- accuracies: % of videos whose label read from the frames matches the prompt, with a 95% percentile "
        "bootstrap interval over the videos; layout distance: mean centroid distance (frame fractions) to the run "
        "from the same noise (SURF's first steps are the optimal-size base run's), same interval",
        "- speed: process CPU seconds per video on one thread; speedup vs the first row = mean of the per-seed "
        "ratios (range over seeds)",
        "", "| run | CPU s/video | speedup | colour % | shape % | direction % | all three % | layout distance |",
        "|---|---|---|---|---|---|---|---|", *lines])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_shard_arguments(p, RESULTS)
    p.add_argument("--prompt-stride", type=int, default=1, help="every k-th prompt of the fixed set of 32")
    p.add_argument("--only", nargs="*", default=None, help="run only rows whose name starts with one of these")
    return run_sharded(p.parse_args(argv), argv, measure, combine)


if __name__ == "__main__":
    raise SystemExit(main())
