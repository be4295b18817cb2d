"""Per-video signature detectors for the toy world.

Input layout everywhere: one video as (T, H, W, 3) floats in [0, 1] — one item of what WanPipeline
returns with ``output_type="np"`` (that output is (B, T, H, W, 3); use :func:`detect_batch` for
it). Torch tensors and uint8 arrays are accepted and converted. Positions are in frame fractions
(x to the right, y downwards), so videos of different resolutions are directly comparable.

How each signature is read:
- the background is each frame's median colour (the object covers < 10% of the frame); a pixel's
  object weight is its largest channel difference from the background, scaled by the object's
  typical difference and clipped to [0, 1] (a soft coverage, so anti-aliased edges count partly);
- colour: the mean colour of the object's core pixels, nearest palette colour;
- shape: fill ratio = area / (soft width * soft height), median over frames; a square fills its
  box (1.0), a circle fills pi/4 (0.785);
- track: weighted centroid per frame (NaN where the object is missing);
- direction: the dominant axis and sign of a least-squares velocity over the present frames;
- smoothness: median second difference of the track (frame fractions per frame^2) and area flicker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..toyworld.world import COLOURS, DIRECTION_VECTORS

PALETTE_NAMES = tuple(COLOURS)
PALETTE = np.array([COLOURS[c] for c in PALETTE_NAMES], dtype=np.float32)

# Thresholds (fractions of full scale). Chosen on ground-truth clips at 32/64/128 px (tests).
DIFF_THRESHOLD = 0.2        # a pixel differing less than this from the background is background
MIN_AREA_FRACTION = 0.01    # object area below this (world objects cover ~0.07) counts as missing
SQUARE_FILL = 0.89          # fill ratio between a circle's 0.785 and a square's 1.0
MIN_DISPLACEMENT = 0.08     # travel (frame fractions) below this reads as no motion


@dataclass
class VideoSignature:
    colour: str | None
    shape: str | None
    direction: str | None
    presence: float                     # fraction of frames with an object
    fill_ratio: float                   # median area / (width * height) (NaN if absent)
    track: np.ndarray = field(repr=False)   # (T, 2) centroid (x, y), NaN where absent
    area: np.ndarray = field(repr=False)    # (T,) object area as a fraction of the frame
    velocity: tuple[float, float]       # least-squares (vx, vy) per frame, frame fractions
    displacement: tuple[float, float]   # velocity * (T - 1)
    jitter: float                       # median |second difference| of the track
    area_flicker: float                 # mean |area change| between frames / mean area
    colour_distance: float              # RGB distance from the mean colour to the chosen palette colour
    mean_colour: tuple[float, float, float]

    def as_dict(self) -> dict:
        d = asdict(self)
        d["track"] = self.track.tolist()
        d["area"] = self.area.tolist()
        return d


def as_video(frames) -> np.ndarray:
    """Any of torch/numpy, float in [0, 1] or uint8, (T, H, W, 3) -> float32 numpy (T, H, W, 3)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().float().cpu().numpy()
    v = np.asarray(frames)
    if v.dtype == np.uint8:
        v = v.astype(np.float32) / 255.0
    v = v.astype(np.float32, copy=False)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise ValueError(f"expected one video as (T, H, W, 3), got shape {v.shape}")
    return v


def object_weights(video) -> np.ndarray:
    """(T, H, W) soft object coverage in [0, 1]."""
    v = as_video(video)
    bg = np.median(v.reshape(v.shape[0], -1, 3), axis=1)  # (T, 3)
    diff = np.abs(v - bg[:, None, None, :]).max(-1)        # (T, H, W)
    hard = diff > DIFF_THRESHOLD
    scale = float(np.percentile(diff[hard], 90)) if hard.sum() >= 4 else 1.0
    w = np.clip(diff / max(scale, 2 * DIFF_THRESHOLD), 0.0, 1.0)
    # Pixels below the threshold are background: zeroed so that noise does not add area.
    return np.where(hard, w, 0.0).astype(np.float32)


def _fill_ratio(w: np.ndarray) -> float:
    area = w.sum()
    width = w.max(0).sum()
    height = w.max(1).sum()
    return float(area / max(width * height, 1e-6))


def classify_colour(video, weights: np.ndarray | None = None) -> tuple[str | None, float, tuple]:
    """(colour name or None, RGB distance to it, mean core colour)."""
    v = as_video(video)
    w = object_weights(v) if weights is None else weights
    core = w > 0.8
    if core.sum() < 3:
        core = w > 0.5
    if core.sum() < 3:
        return None, float("nan"), (float("nan"),) * 3
    mean = v[core].mean(0)
    d = np.linalg.norm(PALETTE - mean[None], axis=1)
    i = int(d.argmin())
    return PALETTE_NAMES[i], float(d[i]), tuple(float(c) for c in mean)


def detect_video(video) -> VideoSignature:
    """All signatures of one video (T, H, W, 3) in [0, 1]."""
    v = as_video(video)
    t, h, w_ = v.shape[:3]
    w = object_weights(v)
    area = w.reshape(t, -1).sum(1) / (h * w_)
    present = area >= MIN_AREA_FRACTION
    ys = (np.arange(h, dtype=np.float32) + 0.5) / h
    xs = (np.arange(w_, dtype=np.float32) + 0.5) / w_
    track = np.full((t, 2), np.nan, dtype=np.float32)
    fills = []
    for i in np.nonzero(present)[0]:
        wi = w[i]
        s = wi.sum()
        track[i, 0] = (wi.sum(0) * xs).sum() / s
        track[i, 1] = (wi.sum(1) * ys).sum() / s
        fills.append(_fill_ratio(wi))
    colour, cdist, mean_colour = classify_colour(v, w)
    fill = float(np.median(fills)) if fills else float("nan")
    shape = None if not fills else ("square" if fill > SQUARE_FILL else "circle")
    idx = np.nonzero(present)[0]
    if len(idx) >= 3:
        tt = idx.astype(np.float64)
        vx = float(np.polyfit(tt, track[idx, 0], 1)[0])
        vy = float(np.polyfit(tt, track[idx, 1], 1)[0])
    else:
        vx = vy = float("nan")
    disp = (vx * (t - 1), vy * (t - 1))
    direction = direction_from_displacement(*disp)
    jitter = _jitter(track)
    flicker = float(np.abs(np.diff(area)).mean() / max(area.mean(), 1e-6)) if t > 1 else 0.0
    return VideoSignature(colour=colour if present.any() else None, shape=shape, direction=direction,
                          presence=float(present.mean()), fill_ratio=fill, track=track, area=area.astype(np.float32),
                          velocity=(vx, vy), displacement=disp, jitter=jitter, area_flicker=flicker,
                          colour_distance=cdist, mean_colour=mean_colour)


def direction_from_displacement(dx: float, dy: float, min_displacement: float = MIN_DISPLACEMENT) -> str | None:
    """The world direction whose unit vector best matches (dx, dy); None if it moved too little."""
    if not np.isfinite(dx) or not np.isfinite(dy) or max(abs(dx), abs(dy)) < min_displacement:
        return None
    best, score = None, -np.inf
    for name, (ux, uy) in DIRECTION_VECTORS.items():
        sc = ux * dx + uy * dy
        if sc > score:
            best, score = name, sc
    return best


def _jitter(track: np.ndarray) -> float:
    acc = track[2:] - 2 * track[1:-1] + track[:-2]
    mag = np.linalg.norm(acc, axis=1)
    mag = mag[np.isfinite(mag)]
    return float(np.median(mag)) if len(mag) else float("nan")


def detect_batch(frames) -> list[VideoSignature]:
    """WanPipeline ``output_type="np"`` frames (B, T, H, W, 3), or one video (T, H, W, 3)."""
    arr = frames
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().float().cpu().numpy()
    arr = np.asarray(arr)
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5:
        raise ValueError(f"expected (B, T, H, W, 3) or (T, H, W, 3), got {arr.shape}")
    return [detect_video(v) for v in arr]
