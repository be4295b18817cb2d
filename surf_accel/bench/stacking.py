"""The stack table (``surf-accel bench``): SURF with the accelerators users already run, on the
shipped toy WanPipeline, all producing 128 px video.

Rows: the base model; SURF (the shipped trained toy refiner, or ``--training-free``); each cache alone
and stacked on SURF; SURF with a sparse preview, alone and with each cache. Columns: speedup (process
CPU time on one thread, ``surf_accel.bench.toy``), the share of transformer calls each cache skipped
per stage, and the signature (colour, direction, all three labels; layout distance to the same-noise
run without the cache or pattern) with 95% bootstrap intervals over videos. Then the cost model's
prediction for Wan2.1-14B at 720p and 1080p of every row, taking the skip fractions measured here per
stage as the assumption that the real model skips as often (said in the results file).

Caches are ``surf-accel generate --cache`` forms (``teacache:T``, ``fbc:T``, ``seacache[:T]``). The
toy is no checkpoint TeaCache published a polynomial for, so TeaCache runs on the time-embedding
indicator with the identity rescale (the raw relative L1 change) here. One process per seed
(``--seeds S --json PART``), then ``--combine PART...``:

    surf-accel bench --seeds 0 --json /tmp/stack0.json        # one per seed, in parallel
    surf-accel bench --combine /tmp/stack0.json /tmp/stack1.json /tmp/stack2.json --out stacking.md
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from surf_accel import metrics
from surf_accel.bench import record
from surf_accel.bench.toy import Run, add_shard_arguments, fmt, generate, run_sharded, setup
from surf_accel.config import SurfConfig
from surf_accel.stages import current_step
from surf_accel.toyworld import NUM_FRAMES, TARGET_SIZE, TEACACHE_FIT, load_refiner, surf_config

# The accelerators (and diffusers with them) are imported where used: every `surf-accel` command
# builds this module's arguments, and none but `bench` needs them.

# chosen on the toy by a threshold sweep (README, "Stacking with caches")
DEFAULT_CACHES = ("teacache:0.15", "fbc:0.08")
# the toy's sparse preview of the signature table: 2x2-token tiles, 3x3x3-tile windows, first frame global
DEFAULT_SPARSE = (1, 2, 2, 3, 3, 3, 1)
# the same kind of pattern on Wan2.1-14B's preview grids (README: fits the 480p and 240p token grids)
WAN_SPARSE = (3, 5, 13, 3, 3, 3, 1)
PREDICTED = ((720, 1280), (1088, 1920))


@dataclass(frozen=True)
class StackRow:
    name: str
    run: Run
    cache: Optional[str] = None  # a --cache form
    reference: Optional[str] = None  # the same-noise row without this row's cache / pattern
    sparse: bool = False


def stack_rows(steps: int, caches, sparse, trained: bool) -> list[StackRow]:
    """``sparse``: the preview's ``SparsePattern`` of the sparse rows (``None``: no sparse rows)."""
    base = Run(f"base {TARGET_SIZE} px", TARGET_SIZE, steps)
    toy = surf_config()
    refiner = "trained" if trained else None
    surf = Run("SURF" + ("" if trained else " (training-free refine)"), TARGET_SIZE, steps, toy, refiner=refiner)
    out = [StackRow(base.name, base), StackRow(surf.name, surf)]
    out += [StackRow(f"{c} alone", base, c, base.name) for c in caches]
    out += [StackRow(f"SURF + {c}", surf, c, surf.name) for c in caches]
    if sparse is not None:
        sp = Run("SURF + sparse preview", TARGET_SIZE, steps, toy.replace(preview_attention=sparse), refiner=refiner)
        out.append(StackRow(sp.name, sp, None, surf.name, True))
        out += [StackRow(f"SURF + {c} + sparse preview", sp, c, surf.name, True) for c in caches]
    return out


class _CallCounter:
    """Transformer calls and computed calls (the last block's self-attention ran) per stage
    (``"call"`` outside SURF)."""

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


def _sparse(numbers):
    """``--sparse-preview``'s numbers -> ``SparsePattern`` (``None`` for none)."""
    from surf_accel.ops.sparse_attention import SparsePattern  # imports the kernels: only when the bench runs

    return SparsePattern.from_numbers(numbers) if numbers else None


def measure(a) -> dict:
    # the registry imports diffusers and every accelerator: only when the bench runs, not to build its arguments
    from surf_accel.registry import install_cache, remove_caches

    pipe, unipc, prompts = setup(a)
    refiners = {} if a.training_free else {"trained": load_refiner(torch.float32)}
    for c in a.cache:  # a bad form is refused before any row runs
        install_cache(pipe, c, teacache_fit=TEACACHE_FIT)
        remove_caches(pipe.transformer)
    rows = stack_rows(a.steps, a.cache, _sparse(a.sparse_preview), not a.training_free)
    videos, out, installed = {}, {}, {}
    load_before = os.getloadavg()
    for row in rows:
        vids, cpu = [], 0.0
        if row.cache:
            installed[row.cache] = install_cache(pipe, row.cache, teacache_fit=TEACACHE_FIT)
        counter = _CallCounter(pipe.transformer)
        try:
            for seed in a.seeds:
                for i in range(0, len(prompts), a.batch):
                    frames, c, _ = generate(pipe, unipc, row.run, prompts[i:i + a.batch], seed, a.guidance, refiners)
                    vids.extend(list(frames))
                    cpu += c
        finally:
            counter.remove()
            remove_caches(pipe.transformer)
        videos[row.name] = vids
        ev = metrics.evaluate(vids, prompts * len(a.seeds))["videos"]
        res = {k: [bool(r[f"{k}_ok"]) for r in ev] for k in ("colour", "direction", "all")}
        res.update(cpu=cpu, n=len(vids), reference=row.reference, cache=row.cache, sparse=row.sparse,
                   calls=dict(counter.calls), computed=dict(counter.computed))
        if row.reference is not None:
            res["distance"] = metrics.compare_layout(videos[row.reference], vids)["track_distances"]
        out[row.name] = res
        print(f"{row.name}: {cpu / len(vids):.2f} CPU s/video, colour {np.mean(res['colour']):.3f}, direction "
              f"{np.mean(res['direction']):.3f}, computed {dict(counter.computed)} of {dict(counter.calls)}, load "
              f"{os.getloadavg()[0]:.2f}", flush=True)
    return {"seeds": list(a.seeds), "rows": out, "order": list(out), "prompts": len(prompts),
            "load": [load_before, os.getloadavg()], "provenance": record.provenance(a.argv, " (CPU)", "surf-accel"),
            "steps": a.steps, "guidance": a.guidance, "toy": str(surf_config()), "installed": installed,
            "refiner": "training-free" if a.training_free else "trained toy refiner",
            "sparse": None if not a.sparse_preview else list(a.sparse_preview)}


def skip_fractions(rows: list[dict]) -> dict[str, float]:
    """Stage name -> share of its transformer calls that skipped, pooled over shards."""
    calls, computed = Counter(), Counter()
    for r in rows:
        calls.update(r["calls"])
        computed.update(r["computed"])
    return {s: 1.0 - computed[s] / calls[s] for s in calls}


def predict(fractions: dict[str, float], height: int, width: int, surf: bool, sparse: bool) -> float:
    """Predicted speedup on Wan2.1-14B (81 frames, 50 steps, CFG) of the unpatched call (``surf``
    False) or SURF ``paper`` with a trained 1.3B-sized refiner (with ``WAN_SPARSE`` as the preview's
    attention where ``sparse``), every stage's transformer FLOPs scaled by 1 - its skip fraction
    (``"call"``: the unpatched call's); a skipped call is taken as free."""
    from surf_accel.catalogue import estimate  # imports diffusers through the registry: only when the bench runs

    cfg = SurfConfig.preset("paper")
    if sparse:
        cfg = cfg.replace(preview_attention=_sparse(WAN_SPARSE))
    est = estimate("wan2.1-14b", height, width, 81, cfg, refiner="wan2.1-1.3b")
    if not surf:
        cached = sum(s.total for s in est.baseline) * (1.0 - fractions.get("call", 0.0))
        return est.baseline_total / (cached + sum(est.baseline_vae.values()))
    cached = sum(s.total * (1.0 - fractions.get(s.name, 0.0)) for s in est.surf)
    return est.baseline_total / (cached + sum(est.surf_vae.values()))


def _skips(frac: dict[str, float]) -> str:
    return ", ".join(f"{s} {100 * f:.0f}%" for s, f in frac.items()) if any(frac.values()) else "-"


def combine(parts: list[dict], out: Path, argv) -> None:
    order, base = parts[0]["order"], parts[0]["order"][0]
    lines, preds = [], []
    for name in order:
        rs = [p["rows"][name] for p in parts]
        pooled = {k: sum((r[k] for r in rs), []) for k in ("colour", "direction", "all")}
        ratios = [p["rows"][base]["cpu"] / p["rows"][base]["n"] / (r["cpu"] / r["n"]) for p, r in zip(parts, rs)]
        frac = skip_fractions(rs)
        dist = "-"
        if rs[0]["reference"] is not None:
            d = metrics.bootstrap_ci(sum((r["distance"] for r in rs), []))
            dist = f"{fmt(*d, scale=1.0, digits=3)} ({rs[0]['reference']})"
        lines.append(f"| {name} | {sum(r['cpu'] for r in rs) / sum(r['n'] for r in rs):.2f} | {np.mean(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) | {_skips(frac)} | "
                     + " | ".join(fmt(*metrics.bootstrap_ci(pooled[k])) for k in ("colour", "direction", "all"))
                     + f" | {dist} |")
        if name != base:
            surf = name.startswith("SURF")
            cells = [f"{predict(frac, h, w, surf, rs[0]['sparse']):.2f}x" for h, w in PREDICTED]
            preds.append(f"| {name} | {' | '.join(cells)} | {_skips(frac)} |")
    p0 = parts[0]
    seeds = sorted(s for p in parts for s in p["seeds"])
    loads = ", ".join(f"seed(s) {p['seeds']}: {p['load'][0][0]:.2f} -> {p['load'][1][0]:.2f}" for p in parts)
    sparse = p0["sparse"]
    record.write(out, "Stack table on the toy world: SURF with caches and a sparse preview", [
        *record.provenance(argv, " (CPU)", "surf-accel"),
        "- shards (one process per seed, 1 torch thread each): "
        + "; ".join(p["provenance"][2].removeprefix("- command: ") for p in parts),
        f"- 1-minute load average at the start -> end of each shard: {loads}",
        f"- model: the shipped toy WanPipeline; {p0['prompts']} prompts x seeds {seeds} = "
        f"{p0['prompts'] * len(seeds)} videos per row, {NUM_FRAMES} frames, {p0['steps']} UniPC steps, guidance "
        f"{p0['guidance']}",
        f"- SURF: `{p0['toy']}`, refined by the {p0['refiner']}",
        f"- caches: {'; '.join(f'`{k}`: {v}' for k, v in p0['installed'].items()) or 'none'} (TeaCache's rescale "
        "is the identity: the toy has no published polynomial)",
        "- sparse preview: " + ("none" if sparse is None else f"tile {tuple(sparse[:3])}, window "
                                f"{tuple(sparse[3:6])} tiles, {sparse[6]} global frame(s)"),
        "- skipped: % of transformer calls per stage whose blocks did not run (counted at the last block's "
        "self-attention; the trained refiner is not cached); layout distance: to the same-noise run named; 95% "
        "percentile bootstrap intervals over videos; speed: process CPU s per video on one thread, speedup vs "
        "the first row = mean of per-seed ratios (range)",
        "", "| run | CPU s/video | speedup | skipped | colour % | direction % | all three % | layout distance |",
        "|---|---|---|---|---|---|---|---|", *lines, "",
        "## Predicted for Wan2.1-14B (cost model: 81 frames, 50 steps, CFG; SURF = `paper` preset with a trained "
        "1.3B-sized refiner)", "",
        "Assumptions, neither measured on real weights: the real model skips the same share of calls per stage "
        "as the toy did (above), and a skipped call is free (the embeddings and head it still runs are left out). "
        f"Sparse rows count the pattern {_sparse(WAN_SPARSE)} on Wan2.1-14B's preview grids (allowed pairs only).", "",
        "| run | " + " | ".join(f"{h}x{w}" for h, w in PREDICTED) + " | skip fractions assumed |",
        "|---|" + "---|" * len(PREDICTED) + "---|", *preds])


def add_arguments(p: argparse.ArgumentParser, results: Path = Path("stacking.md")) -> None:
    add_shard_arguments(p, results)
    p.add_argument("--cache", nargs="*", default=list(DEFAULT_CACHES), metavar="SPEC",
                   help=f"caches, each alone and stacked on SURF (generate's --cache forms; default: "
                   f"{' '.join(DEFAULT_CACHES)})")
    p.add_argument("--sparse-preview", type=int, nargs="*", default=list(DEFAULT_SPARSE),
                   metavar="N", help="sparse preview rows: TT TH TW WT WH WW G as generate's --sparse-preview "
                   f"(default: {' '.join(map(str, DEFAULT_SPARSE))}; none: no sparse rows)")
    p.add_argument("--training-free", action="store_true",
                   help="SURF refines with the base model instead of the shipped trained toy refiner")
    p.add_argument("--prompt-stride", type=int, default=1, help="every k-th prompt of the fixed set of 32 (3: 11 "
                   "prompts, still every colour and direction; 2 or 4 leave out directions)")


def main(args: argparse.Namespace) -> int:
    """``args``: parsed by ``add_arguments``, with ``args.argv`` the command line after ``surf-accel``."""
    _sparse(args.sparse_preview)  # a malformed pattern is refused before the pipeline loads
    return run_sharded(args, args.argv, measure, combine)
