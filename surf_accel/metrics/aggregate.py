"""Prompt-set signature metrics (a mini-VBench for the toy world, docs/design.md 6).

``evaluate(frames, prompts)``: frames as WanPipeline returns them with ``output_type="np"``
((B, T, H, W, 3) in [0, 1]) or a list of single videos (T, H, W, 3); prompts in the world's words
(labels are parsed from them). Returns accuracies (colour, shape, direction, all three), presence,
smoothness and layout statistics, plus per-video records.

``compare_layout(reference, other)``: how far another run's object sits from the reference run's,
frame by frame, for same-seed comparisons (e.g. SURF vs the base model at the target size).
"""

from __future__ import annotations

import numpy as np

from ..toyworld.world import parse_prompt
from .detect import VideoSignature, detect_batch, detect_video


def _signatures(frames) -> list[VideoSignature]:
    if isinstance(frames, (list, tuple)):
        return [s if isinstance(s, VideoSignature) else detect_video(s) for s in frames]
    return detect_batch(frames)


def _nanmean(xs) -> float:
    a = np.asarray(list(xs), dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


def evaluate(frames, prompts: list[str] | tuple[str, ...]) -> dict:
    """Signature metrics of generated videos against the labels named in their prompts."""
    sigs = _signatures(frames)
    if len(sigs) != len(prompts):
        raise ValueError(f"{len(sigs)} videos but {len(prompts)} prompts")
    records = []
    for sig, prompt in zip(sigs, prompts):
        lab = parse_prompt(prompt)
        rec = {"prompt": prompt, "colour": sig.colour, "shape": sig.shape, "direction": sig.direction,
               "colour_ok": sig.colour == lab.get("colour"), "shape_ok": sig.shape == lab.get("shape"),
               "direction_ok": sig.direction == lab.get("direction"), "presence": sig.presence,
               "fill_ratio": sig.fill_ratio, "jitter": sig.jitter, "area_flicker": sig.area_flicker,
               "mean_area": _nanmean(sig.area[sig.area > 0]) if (sig.area > 0).any() else 0.0,
               "centre": [_nanmean(sig.track[:, 0]), _nanmean(sig.track[:, 1])],
               "speed": float(np.hypot(*sig.velocity)) if np.isfinite(sig.velocity[0]) else float("nan")}
        rec["all_ok"] = rec["colour_ok"] and rec["shape_ok"] and rec["direction_ok"]
        records.append(rec)
    n = len(records)
    summary = {
        "n": n,
        "colour_acc": sum(r["colour_ok"] for r in records) / n,
        "shape_acc": sum(r["shape_ok"] for r in records) / n,
        "direction_acc": sum(r["direction_ok"] for r in records) / n,
        "all_acc": sum(r["all_ok"] for r in records) / n,
        "presence": _nanmean(r["presence"] for r in records),
        "empty_frac": sum(r["presence"] == 0 for r in records) / n,
        "jitter": _nanmean(r["jitter"] for r in records),
        "area_flicker": _nanmean(r["area_flicker"] for r in records),
    }
    summary.update(layout_statistics(sigs))
    return {"summary": summary, "videos": records}


def layout_statistics(sigs: list[VideoSignature]) -> dict:
    """Where and how big objects are over a set: mean/std of the mean centre, mean area, mean speed."""
    cx = [_nanmean(s.track[:, 0]) for s in sigs]
    cy = [_nanmean(s.track[:, 1]) for s in sigs]
    area = [_nanmean(s.area[s.area > 0]) if (s.area > 0).any() else float("nan") for s in sigs]
    speed = [float(np.hypot(*s.velocity)) for s in sigs]
    fin = lambda xs: np.asarray([x for x in xs if np.isfinite(x)], dtype=np.float64)  # noqa: E731
    return {
        "centre_x_mean": _nanmean(cx), "centre_y_mean": _nanmean(cy),
        "centre_x_std": float(fin(cx).std()) if len(fin(cx)) else float("nan"),
        "centre_y_std": float(fin(cy).std()) if len(fin(cy)) else float("nan"),
        "area_mean": _nanmean(area), "speed_mean": _nanmean(speed),
    }


def compare_layout(reference, other) -> dict:
    """Same-seed layout agreement of ``other`` with ``reference`` (single videos or batches, any
    resolutions: positions are frame fractions). Returns the mean centroid distance over frames where
    both have an object, the fraction of such frames, and label agreement rates."""
    ra, rb = _signatures(reference if isinstance(reference, list) else reference), _signatures(other if isinstance(other, list) else other)
    if len(ra) != len(rb):
        raise ValueError(f"{len(ra)} reference videos but {len(rb)} others")
    dists, both, agree = [], [], {"colour": 0, "shape": 0, "direction": 0}
    for a, b in zip(ra, rb):
        if a.track.shape != b.track.shape:
            raise ValueError("videos must have the same number of frames")
        ok = np.isfinite(a.track[:, 0]) & np.isfinite(b.track[:, 0])
        both.append(ok.mean())
        dists.append(float(np.linalg.norm(a.track[ok] - b.track[ok], axis=1).mean()) if ok.any() else float("nan"))
        for k in agree:
            agree[k] += getattr(a, k) == getattr(b, k)
    n = len(ra)
    return {"track_distance": _nanmean(dists), "both_present": _nanmean(both),
            "track_distances": dists,  # per video pair, nan where no frame has both objects
            **{f"{k}_agreement": v / n for k, v in agree.items()}}


def bootstrap_ci(values, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (non-finite ones dropped) and its percentile
    bootstrap interval (``resamples`` draws with replacement, fixed ``seed`` so a table is reproducible)."""
    a = np.asarray(list(values), dtype=np.float64)
    a = a[np.isfinite(a)]
    if len(a) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(a.mean()), float(lo), float(hi)
