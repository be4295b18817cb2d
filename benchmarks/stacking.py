"""Stack table (cache rows) on the shipped toy WanPipeline: each cache alone, SURF alone and SURF with
each cache, all producing 128 px video, with speedup, the fraction of transformer calls each cache
skipped per stage, and the signature (colour, direction, layout distance to the same-noise run
without the cache), 95% bootstrap intervals over videos. Then the cost model's prediction for
Wan2.1-14B at 720p and 1080p of SURF + each cache, taking the skip fractions measured here per stage
as the assumption that the real model skips as often (stated in the results file).

Reuses ``benchmarks/signature.py`` (runs, generation, CPU timing on one thread, formatting) and
``surf_accel.metrics.bootstrap_ci``; one process per seed (``--seeds S --json PART``), then
``--combine PART...``.

    python benchmarks/stacking.py --seeds 0 --json /tmp/stack0.json     # one per seed
    python benchmarks/stacking.py --combine /tmp/stack0.json /tmp/stack1.json /tmp/stack2.json

The toy is no published TeaCache checkpoint, so TeaCache runs on the time-embedding indicator with
the identity rescale (``coefficients=(1, 0)``: the raw relative L1 change) and a threshold chosen on
the toy; FirstBlockCache is diffusers' own.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np
import torch

import _record
import signature
from surf_accel import metrics
from surf_accel.integrations.accelerators import TeaCacheConfig, apply_teacache, current_step, remove_teacache
from surf_accel.toyworld import (DEFAULT_GUIDANCE, DEFAULT_STEPS, EVAL_PROMPTS, NUM_FRAMES, TARGET_SIZE,
                                 load_pipeline, surf_config)

RESULTS = Path(__file__).resolve().parent / "results" / "stacking.md"
TEACACHE = dict(threshold=0.2, coefficients=(1.0, 0.0), indicator="temb")
FBC_THRESHOLD = 0.1
CACHES = {"TeaCache": f"TeaCache (temb, identity rescale, threshold {TEACACHE['threshold']})",
          "FBC": f"FirstBlockCache (threshold {FBC_THRESHOLD})"}


def rows(steps: int) -> list[tuple[str, signature.Run, Optional[str], Optional[str]]]:
    """(name, run, cache, same-noise reference row)."""
    base = signature.Run(f"base {TARGET_SIZE} px", TARGET_SIZE, steps)
    surf = signature.Run("SURF toy setting", TARGET_SIZE, steps, surf_config())
    out = [(base.name, base, None, None), (surf.name, surf, None, None)]
    for c in CACHES:
        out.append((f"{c} alone", base, c, base.name))
    for c in CACHES:
        out.append((f"SURF + {c}", surf, c, surf.name))
    return out


def _install(tr, cache: Optional[str]) -> None:
    from diffusers import FirstBlockCacheConfig

    if cache == "TeaCache":
        apply_teacache(tr, TeaCacheConfig(**TEACACHE))
    elif cache == "FBC":
        tr.enable_cache(FirstBlockCacheConfig(threshold=FBC_THRESHOLD))


def _remove(tr) -> None:
    remove_teacache(tr)
    if tr.is_cache_enabled:
        tr.disable_cache()


class _CallCounter:
    """Transformer calls and computed calls (the last block's self-attention ran) per stage."""

    def __init__(self, tr):
        self.calls, self.computed = Counter(), Counter()

        def stage():
            s = current_step(tr)
            return "call" if s is None else s.stage.name

        self._h = [tr.register_forward_pre_hook(lambda m, a: self.calls.update([stage()])),
                   tr.blocks[-1].attn1.register_forward_pre_hook(lambda m, a: self.computed.update([stage()]))]

    def remove(self):
        for h in self._h:
            h.remove()


def measure(a) -> dict:
    torch.set_num_threads(a.threads)
    prompts = list(EVAL_PROMPTS[:: a.prompt_stride])
    pipe = load_pipeline(torch.float32, path=a.pipeline)
    pipe.set_progress_bar_config(disable=True)
    unipc = pipe.scheduler.config
    signature.generate(pipe, unipc, signature.Run("warm-up", 32, 2), prompts[:1], 0, a.guidance)
    videos, out = {}, {}
    load_before = os.getloadavg()
    for name, run, cache, ref in rows(a.steps):
        vids, cpu = [], 0.0
        _install(pipe.transformer, cache)
        counter = _CallCounter(pipe.transformer)
        try:
            for seed in a.seeds:
                for i in range(0, len(prompts), a.batch):
                    frames, c, _ = signature.generate(pipe, unipc, run, prompts[i:i + a.batch], seed, a.guidance)
                    vids.extend(list(frames))
                    cpu += c
        finally:
            counter.remove()
            _remove(pipe.transformer)
        videos[name] = vids
        ev = metrics.evaluate(vids, prompts * len(a.seeds))["videos"]
        row = {k: [bool(r[f"{k}_ok"]) for r in ev] for k in ("colour", "direction", "all")}
        row.update(cpu=cpu, n=len(vids), reference=ref, calls=dict(counter.calls), computed=dict(counter.computed))
        if ref is not None:
            row["distance"] = metrics.compare_layout(videos[ref], vids)["track_distances"]
        out[name] = row
        print(f"{name}: {cpu / len(vids):.2f} CPU s/video, computed {dict(counter.computed)} of "
              f"{dict(counter.calls)}, load {os.getloadavg()[0]:.2f}", flush=True)
    return {"seeds": list(a.seeds), "rows": out, "order": list(out), "prompts": len(prompts),
            "load": [load_before, os.getloadavg()], "provenance": _record.provenance(None, " (CPU)"),
            "steps": a.steps, "guidance": a.guidance, "toy": str(surf_config())}


def _skip_fractions(rows: list[dict]) -> dict[str, float]:
    calls, computed = Counter(), Counter()
    for r in rows:
        calls.update(r["calls"])
        computed.update(r["computed"])
    return {s: 1.0 - computed[s] / calls[s] for s in calls}


def predict(fractions: dict[str, float], height: int, width: int) -> tuple[float, float]:
    """Wan2.1-14B, 81 frames, 50 steps, CFG: (SURF ``paper`` with a trained 1.3B refiner, the same with
    every stage's transformer FLOPs scaled by 1 - its skip fraction; a skipped call assumed free)."""
    from surf_accel.config import SurfConfig
    from surf_accel.cost_model import estimate

    est = estimate("wan2.1-14b", height, width, 81, SurfConfig.preset("paper"), refiner="wan2.1-1.3b")
    toy_stage = {"preview": "preview", "preview_low": "preview_low", "refine": "refine"}
    cached = sum(s.total * (1.0 - fractions.get(toy_stage[s.name], 0.0)) for s in est.surf) + sum(est.surf_vae.values())
    return est.speedup, est.baseline_total / cached


def combine(parts: list[dict], out: Path, argv) -> None:
    order, base = parts[0]["order"], parts[0]["order"][0]
    lines, preds = [], []
    for name in order:
        rs = [p["rows"][name] for p in parts]
        pooled = {k: sum((r[k] for r in rs), []) for k in ("colour", "direction", "all")}
        ratios = [p["rows"][base]["cpu"] / p["rows"][base]["n"] / (r["cpu"] / r["n"]) for p, r in zip(parts, rs)]
        frac = _skip_fractions(rs)
        skips = ", ".join(f"{s} {100 * f:.0f}%" for s, f in frac.items()) if any(frac.values()) else "-"
        dist = "-"
        if rs[0]["reference"] is not None:
            d = metrics.bootstrap_ci(sum((r["distance"] for r in rs), []))
            dist = f"{signature._fmt(*d, scale=1.0, digits=3)} ({rs[0]['reference']})"
        lines.append(f"| {name} | {sum(r['cpu'] for r in rs) / sum(r['n'] for r in rs):.2f} | {np.mean(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) | {skips} | "
                     + " | ".join(signature._fmt(*metrics.bootstrap_ci(pooled[k])) for k in ("colour", "direction",
                                                                                           "all"))
                     + f" | {dist} |")
        if name.startswith("SURF +"):
            for h, w in ((720, 1280), (1088, 1920)):
                alone, stacked = predict(frac, h, w)
                preds.append(f"| {name} | {h}x{w} | {alone:.2f}x | {stacked:.2f}x | "
                             + ", ".join(f"{s} {100 * f:.0f}%" for s, f in frac.items()) + " |")
    p0 = parts[0]
    seeds = sorted(s for p in parts for s in p["seeds"])
    loads = ", ".join(f"seed(s) {p['seeds']}: {p['load'][0][0]:.2f} -> {p['load'][1][0]:.2f}" for p in parts)
    _record.write(out, "Stack table on the toy world: caches with SURF (issue 12, cache rows)", [
        *_record.provenance(argv, " (CPU)"),
        f"- shards (one process per seed, 1 torch thread each): {'; '.join(p['provenance'][2] for p in parts)}",
        f"- 1-minute load average at the start -> end of each shard: {loads}",
        f"- model: the shipped toy WanPipeline; {p0['prompts']} prompts x seeds {seeds} = "
        f"{p0['prompts'] * len(seeds)} videos per row, {NUM_FRAMES} frames, {p0['steps']} UniPC steps, guidance "
        f"{p0['guidance']}",
        f"- SURF toy setting: `{p0['toy']}`",
        f"- caches: {'; '.join(CACHES.values())}; TeaCache's rescale is the identity because the toy has no "
        "published polynomial",
        "- skipped: % of transformer calls per stage whose blocks did not run (counted at the last block's "
        "self-attention); layout distance: to the same-noise run without the cache; 95% percentile bootstrap "
        "intervals over videos; speed: process CPU s per video on one thread, speedup vs the first row = mean "
        "of per-seed ratios (range)",
        "", "| run | CPU s/video | speedup | skipped | colour % | direction % | all three % | layout distance |",
        "|---|---|---|---|---|---|---|---|", *lines, "",
        "## Predicted for Wan2.1-14B (cost model, 81 frames, 50 steps, CFG, `paper` preset, trained 1.3B refiner)",
        "",
        "Assumption: the real model skips the same fraction of calls per stage as the toy did (measured above), "
        "and a skipped call costs nothing (the embeddings and head a skipped call still runs are left out). "
        "Neither is measured on real weights.", "",
        "| stack | size | SURF alone | SURF + cache | skip fractions assumed |", "|---|---|---|---|---|", *preds])


def main(argv=None) -> int:
    p = signature.shard_parser(__doc__.split("\n")[0], RESULTS)
    p.add_argument("--prompt-stride", type=int, default=5, help="every k-th prompt of the fixed set of 32 (5: 7 "
                   "prompts covering every colour and direction; a multiple of 4 would keep one direction)")
    return signature.run_sharded(p.parse_args(argv), argv, measure, combine)


if __name__ == "__main__":
    raise SystemExit(main())
