"""A SURF plan chosen for a speedup target (``surf-accel plan``): every combination of preset, refine
model, refine windows and a preview cache is costed by the cost model (``surf_accel.catalogue``), and
the plan with the fewest approximations that is predicted to reach the target is chosen (ties: the
fastest). Each approximation is a departure from the base model that quality has to be checked for:
a refine by a smaller model, refine windows, a preview cache, the ``fast`` preset's shorter stages.

What the numbers rest on is stated with each plan: FLOP ratios, not timings; TeaCache's skip fractions
are the toy's measured ones (``benchmarks/results/stacking.md``), not a real model's; the quality of a
smaller model's training-free refine is measured on the toy only (``benchmarks/results/signature_sibling.md``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Optional

from surf_accel.catalogue import estimate, family_defaults, models
from surf_accel.config import SurfConfig

# TeaCache (threshold 0.15, time-embedding indicator) skipped these shares of the preview stages' calls on the
# toy world (benchmarks/results/stacking.md, "SURF + teacache:0.15"); the refine is not cached.
TEACACHE_SKIPS = {"preview": 0.33, "preview_low": 0.53}
REFINE_WINDOW = (4, 1000, 1000)  # 4 latent frames, whole height and width: the paper's temporal windows
PRESETS = ("quality", "paper", "fast")


@dataclass(frozen=True)
class TargetPlan:
    """One costed combination: what it runs, its predicted speedup and what it needs or assumes."""

    preset: str
    refine: str  # "base" | "transformer:<catalogue name>" | "trained:<catalogue name>"
    window: Optional[tuple[int, int, int]]
    cache: Optional[str]  # "teacache:0.15" on the preview stages, or None
    speedup: float
    approximations: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        kind, _, name = self.refine.partition(":")
        refine = {"base": "the base model (training-free)", "transformer": f"{name} (training-free)",
                  "trained": f"a trained refiner the size of {name}"}[kind]
        lines = [f"predicted speedup {self.speedup:.2f}x (FLOPs, not a timing)",
                 f"  preset:  {self.preset}", f"  refine:  {refine}",
                 f"  windows: {self.window or 'none (dense refine attention)'}",
                 f"  cache:   {self.cache + ' on the preview stages' if self.cache else 'none'}",
                 f"  approximations to check for quality: {', '.join(self.approximations) or 'none'}"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _refiners(model: str, trained: bool) -> list[str]:
    """The refine choices for ``model``: the base model, every smaller published transformer of its
    variant (training-free) and, with ``trained``, trained refiners of those sizes."""
    catalogue = models()
    spec = catalogue[model]
    smaller = [n for n, s in catalogue.items() if n != model and s.family == spec.family and s.params < spec.params]
    return ["base"] + [f"transformer:{n}" for n in smaller] + ([f"trained:{n}" for n in smaller] if trained else [])


def _cost(model: str, height: int, width: int, frames: int, steps: int, preset: str, refine: str,
          window, cache: Optional[str]) -> float:
    kind, _, name = refine.partition(":")
    cfg = SurfConfig.preset(preset).replace(window=window)
    est = estimate(model, height, width, frames, cfg, steps=steps,
                   refiner=name if kind == "trained" else None,
                   refiner_transformer=name if kind == "transformer" else None)
    skips = TEACACHE_SKIPS if cache else {}
    surf = sum(s.total * (1.0 - skips.get(s.name, 0.0)) for s in est.surf) + sum(est.surf_vae.values())
    return est.baseline_total / surf


def candidates(model: str, height: int, width: int, *, frames: Optional[int] = None, steps: int = 50,
               trained: bool = False) -> list[TargetPlan]:
    """Every combination for a ``model`` call at ``height`` x ``width``, costed."""
    catalogue = models()
    if model not in catalogue:
        raise ValueError(f"unknown model {model!r}; known: {sorted(catalogue)}")
    if frames is None:
        frames = family_defaults()[catalogue[model].family].frames
    out = []
    for preset, refine, window, cache in itertools.product(PRESETS, _refiners(model, trained),
                                                           (None, REFINE_WINDOW), (None, "teacache:0.15")):
        approx = []
        if refine != "base":
            approx.append("a smaller model refines" if refine.startswith("transformer") else "a trained refiner")
        if window is not None:
            approx.append("refine windows")
        if cache is not None:
            approx.append("TeaCache on the preview")
        if preset == "fast":
            approx.append("the fast preset's shorter stages")
        notes = []
        if refine.startswith("trained"):
            notes.append("no trained refiner is published for this model: train one with `surf-accel train-refiner`")
        if cache is not None:
            notes.append(f"TeaCache skip fractions assumed from the toy world: "
                         f"{', '.join(f'{s} {100 * f:.0f}%' for s, f in TEACACHE_SKIPS.items())}")
        speed = _cost(model, height, width, frames, steps, preset, refine, window, cache)
        out.append(TargetPlan(preset, refine, window, cache, speed, tuple(approx), tuple(notes)))
    return out


def plan_for_target(model: str, height: int, width: int, target: float, *, frames: Optional[int] = None,
                    steps: int = 50, trained: bool = False) -> TargetPlan:
    """The plan with the fewest approximations predicted to reach ``target`` (ties: the fastest);
    ``ValueError`` naming the fastest plan when none does."""
    if target <= 1:
        raise ValueError(f"target must be a speedup above 1, got {target}")
    every = candidates(model, height, width, frames=frames, steps=steps, trained=trained)
    reaching = [c for c in every if c.speedup >= target]
    if not reaching:
        best = max(every, key=lambda c: c.speedup)
        raise ValueError(f"no plan is predicted to reach {target:g}x for {model} at {height}x{width}"
                         f"{'' if trained else ' without a trained refiner'}; the fastest:\n{best.describe()}")
    return min(reaching, key=lambda c: (len(c.approximations), -c.speedup))
