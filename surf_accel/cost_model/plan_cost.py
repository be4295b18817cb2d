"""What a planned call costs (docs/design.md 6): FLOPs per stage for the baseline and for SURF, from
the transformer and VAE specs (``cost_model.specs``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from surf_accel.config import SurfConfig
from surf_accel.cost_model.specs import HunyuanVideoSpec, TransformerSpec, VaeSpec, forward_flops
from surf_accel.planner import Plan, Stage, plan_stages

# NVLink 4 on an H100 SXM: 900 GB/s per GPU both directions together, 450 GB/s each way
NVLINK_H100_BYTES_PER_S = 450e9


@dataclass
class StageCost:
    name: str
    size: tuple[int, int]  # pixels
    tokens: int
    steps: int
    passes_per_step: int  # 2 with classifier-free guidance
    linear: float
    attention: float
    model: str = ""

    @property
    def total(self) -> float:
        return self.linear + self.attention


@dataclass
class Estimate:
    model: str
    height: int
    width: int
    frames: int
    baseline: list = field(default_factory=list)  # StageCost rows + VAE rows (dict)
    surf: list = field(default_factory=list)
    baseline_vae: dict = field(default_factory=dict)
    surf_vae: dict = field(default_factory=dict)
    plan: Optional[Plan] = None
    specs: dict = field(default_factory=dict)  # spec name -> the transformer spec its rows were costed with

    @property
    def cost_warning(self) -> Optional[str]:
        """Why SURF counts more FLOPs than the unpatched call, or ``None`` where it counts fewer."""
        if self.surf_total <= self.baseline_total:
            return None
        t_base = sum(s.total for s in self.baseline)
        t_surf = sum(s.total for s in self.surf)
        vae_extra = sum(self.surf_vae.values()) - sum(self.baseline_vae.values())
        head = (f"SURF counts more FLOPs than the unpatched call ({self.surf_total / 1e12:.4g} vs "
                f"{self.baseline_total / 1e12:.4g} TFLOP): ")
        if t_surf <= t_base:
            return head + (f"the pixel handoff's VAE round trip ({vae_extra / 1e12:.4g} TFLOP) costs more than the "
                           f"{(t_base - t_surf) / 1e12:.4g} TFLOP of transformer work it saves; use handoff='latent' "
                           "or call with more steps")
        return head + ("at this size and step count the extra stages' per-step costs (text attention and embeddings, "
                       "which do not shrink with the resolution) outweigh their smaller token counts; call with more "
                       "steps or at a larger size, lower the step fractions, or use SurfConfig.identity()")

    @property
    def warnings(self) -> tuple[str, ...]:
        """The plan's warnings, then the cost warning if any."""
        w = self.cost_warning
        return tuple(self.plan.warnings if self.plan is not None else ()) + ((w,) if w else ())

    @property
    def baseline_total(self) -> float:
        return sum(s.total for s in self.baseline) + sum(self.baseline_vae.values())

    @property
    def surf_total(self) -> float:
        return sum(s.total for s in self.surf) + sum(self.surf_vae.values())

    @property
    def speedup(self) -> float:
        return self.baseline_total / self.surf_total

    @property
    def floor(self) -> float:
        """The speedup's ceiling: SURF's cost if only its optimal-resolution steps and VAE passes remained."""
        first = self.surf[0].total if self.surf else 0.0
        return self.baseline_total / (first + sum(self.surf_vae.values()))

    def table(self) -> str:
        def fmt(x):
            return f"{x / 1e12:10.2f}"

        lines = [f"{self.model}: {self.height}x{self.width}, {self.frames} frames "
                 "(TFLOPs; x = passes per step, 2 with classifier-free guidance; linear / attention / total)",
                 f"{'run':9s} {'stage':12s} {'size':>10s} {'tokens':>7s} {'steps':>5s} {'x':>2s} "
                 f"{'linear':>10s} {'attention':>10s} {'total':>10s}"]
        for label, rows, vae in (("baseline", self.baseline, self.baseline_vae), ("surf", self.surf, self.surf_vae)):
            for s in rows:
                lines.append(f"{label:9s} {s.name:12s} {s.size[0]:>4d}x{s.size[1]:<5d} {s.tokens:>7d} {s.steps:>5d} "
                             f"{s.passes_per_step:>2d} {fmt(s.linear)} {fmt(s.attention)} {fmt(s.total)}")
            for k, v in vae.items():
                lines.append(f"{label:9s} {k:12s} {'':>10s} {'':>7s} {'':>5s} {'':>2s} {'':>10s} {'':>10s} {fmt(v)}")
            total = self.baseline_total if label == "baseline" else self.surf_total
            lines.append(f"{label:9s} {'TOTAL':12s} {'':>10s} {'':>7s} {'':>5s} {'':>2s} {'':>10s} {'':>10s} {fmt(total)}")
        lines.append(f"predicted speedup {self.speedup:.2f}x (ceiling {self.floor:.2f}x if the low-resolution and "
                     "refine stages were free)")
        return "\n".join(lines)


    def per_gpu_table(self, degree: int, *, bandwidth: float = NVLINK_H100_BYTES_PER_S,
                      dtype_bytes: int = 2) -> str:
        """SURF's stages under Ulysses context parallelism over ``degree`` GPUs: each GPU's FLOPs (the
        total over ``degree``: shards of the tokens for the linear layers, of the heads for attention)
        and the all-to-all each GPU sends per attention layer (q, k, v out and the output back: four
        ``tokens / degree x dim`` tensors of ``dtype_bytes``, ``(degree - 1) / degree`` of them to other
        GPUs), then per stage and its time at ``bandwidth`` bytes/s if nothing overlaps it."""
        lines = [f"per GPU under Ulysses context parallelism over {degree} GPUs (all-to-all in "
                 f"{8 * dtype_bytes}-bit activations at {bandwidth / 1e9:.0f} GB/s per direction, NVLink 4 on "
                 "H100 SXM; compute split evenly, communication not overlapped)",
                 f"{'stage':12s} {'tokens/GPU':>10s} {'TFLOP/GPU':>10s} {'MB/layer':>9s} {'layers':>6s} "
                 f"{'GB/stage':>9s} {'comm s':>7s}"]
        for s in self.surf:
            spec = self.specs[s.model]
            layers = spec.num_layers + getattr(spec, "num_single_layers", 0)
            per_layer = 4 * s.tokens / degree * spec.dim * dtype_bytes * (degree - 1) / degree
            stage_bytes = per_layer * layers * s.steps * s.passes_per_step
            lines.append(f"{s.name:12s} {s.tokens // degree:>10d} {s.total / degree / 1e12:>10.2f} "
                         f"{per_layer / 1e6:>9.1f} {layers:>6d} {stage_bytes / 1e9:>9.1f} "
                         f"{stage_bytes / bandwidth:>7.2f}")
        return "\n".join(lines)


def _stage_cost(spec: TransformerSpec, stage: Stage, cfg_passes: int, name_model: str, sparse=None) -> StageCost:
    fl = forward_flops(spec, stage.latent_size, stage.window, sparse if stage.name.startswith("preview") else None)
    k = stage.steps * cfg_passes
    return StageCost(stage.name, (stage.height, stage.width), fl["tokens"], stage.steps, cfg_passes,
                     k * fl["linear"], k * fl["attention"], name_model)


def estimate_plan(plan: Plan, spec: TransformerSpec | HunyuanVideoSpec, *, passes: int, vae: VaeSpec,
                  refiner: Optional[TransformerSpec | HunyuanVideoSpec] = None,
                  refiner_passes: Optional[int] = None, decode_output: bool = True) -> Estimate:
    """Costs of a planned call: the baseline (the request's steps at its size with ``spec``) and the
    plan. ``passes``: transformer passes per step of the call (2 with classifier-free guidance);
    ``refiner``: the spec of the model a ``"trained_refiner"`` or ``"refiner_transformer"`` stage runs
    (``refiner_passes`` per step for the latter; a trained refiner always takes one)."""
    req, config = plan.request, plan.config
    base_plan = plan_stages(req, plan.family, plan.scheduler, SurfConfig.identity())
    est = Estimate(spec.name, req.height, req.width, req.num_frames, plan=plan,
                   specs={m.name: m for m in (spec, refiner) if m is not None})
    est.baseline = [_stage_cost(spec, s, passes, spec.name) for s in base_plan.stages]
    for s in plan.stages:
        if s.model == "trained_refiner":
            est.surf.append(_stage_cost(refiner, s, 1, refiner.name))
            continue
        g = config.refine_guidance if (s.name == "refine" and config.refine_guidance is not None) else None
        p = passes if g is None else (2 if g > 1 else 1)
        if s.model == "refiner_transformer":
            est.surf.append(_stage_cost(refiner, s, p if refiner_passes is None else refiner_passes, refiner.name))
        else:
            est.surf.append(_stage_cost(spec, s, p, spec.name, config.preview_attention))
    f = req.num_frames
    est.baseline_vae = {"vae decode": vae.decode_flops(f, req.height, req.width)} if decode_output else {}
    out = plan.stages[-1]
    surf_vae = {}
    if out.start == "handoff" and config.handoff == "pixel":
        prev = plan.stages[-2]
        surf_vae["vae decode lr"] = vae.decode_flops(f, prev.height, prev.width)
        surf_vae["vae encode"] = vae.encode_flops(f, out.height, out.width)
    if decode_output:
        surf_vae["vae decode"] = vae.decode_flops(f, out.height, out.width)
    est.surf_vae = surf_vae
    return est
