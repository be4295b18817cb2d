"""The procedural toy world: one coloured shape moving in a straight line over a dark background.

Every clip is described by a :class:`ClipSpec` in resolution-free units (positions and sizes are
fractions of the frame), so the same spec rendered at 32, 64 or 128 px is the same scene. Rendering
is anti-aliased by exact-ish pixel coverage of a signed distance, so small renders stay faithful.

Frames come out as float tensors in [-1, 1] with layout (C, T, H, W), the layout diffusers' video
VAEs take (after adding a batch axis).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import asdict, dataclass

import torch

# Palette in [0, 1] RGB. Chosen far apart in RGB so that a blurred or darkened object still reads
# as its colour; yellow is the only two-channel colour.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.92, 0.12, 0.10),
    "green": (0.12, 0.80, 0.18),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.85, 0.12),
}
BACKGROUND: tuple[float, float, float] = (0.08, 0.08, 0.10)
SHAPES: tuple[str, ...] = ("circle", "square")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Unit motion per direction in image coordinates (x to the right, y downwards).
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

# Circle radius and square half-side as fractions of the shorter frame side. The two areas match
# within 5% (pi * 0.15^2 = 0.0707, (2 * 0.13)^2 = 0.0676), so only the outline tells them apart.
CIRCLE_RADIUS = 0.15
SQUARE_HALF = 0.13
# Speed range in frame fractions per frame: over 16 frame steps the object travels 0.32-0.56 of the frame.
SPEED_RANGE = (0.020, 0.035)


def prompt_for(colour: str, shape: str, direction: str) -> str:
    """The plain-words prompt of a clip, e.g. ``"a red circle moving left"``."""
    return f"a {colour} {shape} moving {direction}"


def parse_prompt(prompt: str) -> dict[str, str]:
    """Inverse of :func:`prompt_for` (extra words are ignored): labels named in the prompt."""
    words = prompt.lower().split()
    out: dict[str, str] = {}
    for w in words:
        if w in COLOURS:
            out["colour"] = w
        elif w in SHAPES:
            out["shape"] = w
        elif w in DIRECTIONS:
            out["direction"] = w
    return out


def vocabulary() -> list[str]:
    """Every word a world prompt can contain (the tokenizer's vocabulary, before special tokens)."""
    return ["a", "moving", *COLOURS, *SHAPES, *DIRECTIONS]


def all_label_combinations() -> list[tuple[str, str, str]]:
    """(colour, shape, direction) for every combination, in a fixed order."""
    return list(itertools.product(COLOURS, SHAPES, DIRECTIONS))


@dataclass(frozen=True)
class ClipSpec:
    """A clip in resolution-free units. ``x0, y0``: object centre at frame 0 (fractions of width
    and height); ``speed``: displacement per frame as a fraction of the frame side along the motion."""

    colour: str
    shape: str
    direction: str
    speed: float
    x0: float
    y0: float

    @property
    def prompt(self) -> str:
        return prompt_for(self.colour, self.shape, self.direction)

    @property
    def labels(self) -> dict:
        return asdict(self)

    def centre(self, frame: int) -> tuple[float, float]:
        """Object centre (x, y) in frame fractions at ``frame``."""
        dx, dy = DIRECTION_VECTORS[self.direction]
        return self.x0 + dx * self.speed * frame, self.y0 + dy * self.speed * frame

    def track(self, num_frames: int) -> torch.Tensor:
        """(T, 2) object centres (x, y) in frame fractions."""
        return torch.tensor([self.centre(t) for t in range(num_frames)], dtype=torch.float32)

    def render(self, height: int, width: int | None = None, num_frames: int = 17) -> torch.Tensor:
        """The clip as a (3, T, H, W) float32 tensor in [-1, 1]."""
        return render_clip(self, height, width if width is not None else height, num_frames)


def _coverage(spec: ClipSpec, height: int, width: int, num_frames: int) -> torch.Tensor:
    """(T, H, W) fraction of each pixel covered by the object (anti-aliased by signed distance)."""
    side = float(min(height, width))
    # Pixel centres in pixels.
    ys = (torch.arange(height, dtype=torch.float64) + 0.5).view(1, height, 1)
    xs = (torch.arange(width, dtype=torch.float64) + 0.5).view(1, 1, width)
    track = spec.track(num_frames).double()
    cx = (track[:, 0] * width).view(-1, 1, 1)
    cy = (track[:, 1] * height).view(-1, 1, 1)
    dx, dy = xs - cx, ys - cy
    if spec.shape == "circle":
        dist = torch.sqrt(dx * dx + dy * dy) - CIRCLE_RADIUS * side
    elif spec.shape == "square":
        dist = torch.maximum(dx.abs(), dy.abs()) - SQUARE_HALF * side
    else:
        raise ValueError(f"unknown shape {spec.shape!r}; known: {SHAPES}")
    # A one-pixel-wide linear ramp across the edge approximates the pixel's covered area.
    return (0.5 - dist).clamp(0.0, 1.0).float()


def render_clip(spec: ClipSpec, height: int, width: int, num_frames: int = 17) -> torch.Tensor:
    """Render ``spec`` to a (3, T, H, W) float32 tensor in [-1, 1]."""
    if spec.colour not in COLOURS:
        raise ValueError(f"unknown colour {spec.colour!r}; known: {list(COLOURS)}")
    cov = _coverage(spec, height, width, num_frames).unsqueeze(0)  # (1, T, H, W)
    fg = torch.tensor(COLOURS[spec.colour]).view(3, 1, 1, 1)
    bg = torch.tensor(BACKGROUND).view(3, 1, 1, 1)
    rgb = bg + (fg - bg) * cov
    return rgb * 2.0 - 1.0


def random_spec(rng: random.Random, colour: str | None = None, shape: str | None = None,
                direction: str | None = None, num_frames: int = 17) -> ClipSpec:
    """Draw one clip; unspecified labels are drawn uniformly. The path stays inside the frame."""
    colour = colour or rng.choice(list(COLOURS))
    shape = shape or rng.choice(SHAPES)
    direction = direction or rng.choice(DIRECTIONS)
    speed = rng.uniform(*SPEED_RANGE)
    travel = speed * (num_frames - 1)
    margin = max(CIRCLE_RADIUS, SQUARE_HALF) + 0.02
    # Along the motion: the path's midpoint is jittered around the centre while staying inside.
    slack = max(0.0, (1.0 - 2 * margin - travel) / 2)
    mid = 0.5 + rng.uniform(-slack, slack)
    across = rng.uniform(0.3, 0.7)
    dx, dy = DIRECTION_VECTORS[direction]
    start_along = mid - travel / 2  # in the motion's own coordinate
    if dx != 0:
        x0 = start_along if dx > 0 else 1.0 - start_along
        y0 = across
    else:
        y0 = start_along if dy > 0 else 1.0 - start_along
        x0 = across
    return ClipSpec(colour, shape, direction, speed, x0, y0)


def sample_specs(n: int, seed: int = 0, num_frames: int = 17) -> list[ClipSpec]:
    """``n`` clips, balanced over all (colour, shape, direction) combinations, seeded."""
    rng = random.Random(seed)
    combos = all_label_combinations()
    specs: list[ClipSpec] = []
    while len(specs) < n:
        order = combos[:]
        rng.shuffle(order)
        for c, s, d in order[: n - len(specs)]:
            specs.append(random_spec(rng, c, s, d, num_frames))
    return specs


def render_batch(specs: list[ClipSpec], size: int, num_frames: int = 17) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] for square frames of ``size`` px."""
    return torch.stack([s.render(size, size, num_frames) for s in specs])


def to_numpy_video(clip: torch.Tensor):
    """(3, T, H, W) in [-1, 1] -> numpy (T, H, W, 3) in [0, 1], the layout WanPipeline returns
    per video with ``output_type="np"``."""
    return ((clip.float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu().numpy()


def expected_displacement(spec: ClipSpec, num_frames: int = 17) -> float:
    """Distance travelled over the clip, in frame fractions."""
    return spec.speed * (num_frames - 1)


__all__ = [
    "BACKGROUND", "CIRCLE_RADIUS", "COLOURS", "ClipSpec", "DIRECTIONS", "DIRECTION_VECTORS", "SHAPES",
    "SPEED_RANGE", "SQUARE_HALF", "all_label_combinations", "expected_displacement", "parse_prompt",
    "prompt_for", "random_spec", "render_batch", "render_clip", "sample_specs", "to_numpy_video",
    "vocabulary",
]

