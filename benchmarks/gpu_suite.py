"""Real-shape GPU suite (issue 13): one command that measures what SURF's end-to-end speed rests on.

    python benchmarks/gpu_suite.py --out DIR            # one H100/H200, bf16, < 8 min
    python benchmarks/gpu_suite.py --out DIR --dry-run  # the same code path on CPU, tiny configs

Sections, each written to ``DIR/gpu_suite.md`` (plus PNG plots when matplotlib is installed):

1. Transformer forwards with random weights (speed does not depend on weight values) at the real
   configs (Wan2.1-14B, Wan2.1-1.3B, HunyuanVideo 13B) and the token counts of every stage the
   presets plan (Wan 480p / 240p / 720p / 1080p at 81 frames, HunyuanVideo 720p / 360p at 129
   frames): seconds per forward, dense attention vs each window backend, peak memory. Only
   ``--layers`` blocks are built; per-forward times are scaled by the real block count (patch
   embedding, text embedding and head are then counted once per measured block group: they are
   < 1% of a block at these sizes). Peak memory is that of the reduced model.
2. VAE encode/decode at the pixel handoff's sizes, measured at two frame counts and extrapolated
   linearly in frames to the request (a causal 3D VAE costs ``a + b * (F - 1)``, docs/design.md 6).
3. Fused latent ops against a measured device-to-device copy (``benchmarks/ops.py``'s cases).
4. Window attention TFLOP/s on attended pairs against dense SDPA / flash-attn
   (``benchmarks/window_attention.py``).
5. Predicted end-to-end time of the baseline and each preset (training-free, trained 1.3B-sized
   refiner, with windows): measured per-forward times x the plan's steps and passes, plus the
   measured VAE passes; beside the cost model's FLOP speedup and the paper's figures.

``--dry-run`` runs every section on CPU with tiny model configs and latents scaled down from the
plans' (times are meaningless there; it proves the script runs). ``--budget`` seconds bound every
section (measurements that would start later are reported as skipped). Any exception in a
measurement is recorded under "Skipped or failed" and the suite goes on; ``gpu_suite.md`` is
rewritten after every measurement, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from surf_accel.bench import record as _record  # noqa: E402
from _timing import seconds  # noqa: E402
import ops as ops_bench  # noqa: E402
import window_attention as window_bench  # noqa: E402
from surf_accel import catalogue, cost_model  # noqa: E402
from surf_accel.config import SurfConfig  # noqa: E402
from surf_accel.ops import OPS  # noqa: E402
from surf_accel.ops.window_attention import WINDOW_ATTENTION  # noqa: E402

PAPER = {"wan2.1-14b 720p": (3497.0, 278.0)}  # docs/design.md 1: seconds, baseline and SURF (12.58x)
PAPER_SPEEDUP = {"hunyuanvideo 720p": 8.7}
WAN_WINDOW = (4, 1000, 1000)  # temporal refine windows of 4 latent frames (README estimate)
WINDOW_BACKENDS = ("triton", "cuda", "cpp", "flex", "torch")


@dataclass(frozen=True)
class Request:
    model: str
    height: int
    width: int
    frames: int

    @property
    def label(self) -> str:
        return f"{self.model} {self.height}p"


REQUESTS = [Request("wan2.1-14b", 720, 1280, 81), Request("wan2.1-14b", 1088, 1920, 81),
            Request("hunyuanvideo", 720, 1280, 129)]
# Shapes the issue lists beyond the plans' own: (model, height, width, frames).
EXTRA_SHAPES = [("wan2.1-14b", 480, 832, 81), ("wan2.1-14b", 240, 416, 81), ("wan2.1-1.3b", 480, 832, 81),
                ("wan2.1-1.3b", 240, 416, 81), ("wan2.1-1.3b", 720, 1280, 81), ("wan2.1-1.3b", 1088, 1920, 81),
                ("hunyuanvideo", 368, 640, 129)]


def presets(req: Request) -> dict[str, tuple[SurfConfig, str | None]]:
    """Preset name -> (config, refiner model or None for training-free)."""
    if req.model == "hunyuanvideo":
        hp = SurfConfig.preset("hunyuan-paper")
        return {"hunyuan-paper": (hp, None), "hunyuan-paper, no windows": (hp.replace(window=None), None)}
    out = {}
    for name in ("paper", "fast"):
        cfg = SurfConfig.preset(name)
        out[name] = (cfg, None)
        out[f"{name} + windows {WAN_WINDOW[0]}"] = (cfg.replace(window=WAN_WINDOW), None)
        out[f"{name}, trained 1.3B refiner + windows"] = (cfg.replace(window=WAN_WINDOW), "wan2.1-1.3b")
    return out


# ---- models -----------------------------------------------------------------------------------
def wan_config(model: str, layers: int, dry: bool) -> dict:
    if dry:
        return dict(num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16, text_dim=32,
                    freq_dim=16, ffn_dim=64, num_layers=layers, rope_max_seq_len=64)
    spec = catalogue.MODELS[model]  # diffusers' defaults are the 14B config; 1.3B differs in width
    return dict(num_attention_heads=spec.num_heads, attention_head_dim=spec.dim // spec.num_heads,
                ffn_dim=spec.ffn_dim, num_layers=layers)


def hunyuan_config(layers: int, dry: bool) -> dict:
    dual, single = max(1, layers // 2), max(1, layers - layers // 2)
    if dry:
        return dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=16, num_layers=dual,
                    num_single_layers=single, num_refiner_layers=1, text_embed_dim=32, pooled_projection_dim=8,
                    rope_axes_dim=(4, 6, 6))
    return dict(num_layers=dual, num_single_layers=single)


@dataclass
class Model:
    name: str
    module: torch.nn.Module
    scale: float  # real blocks / measured blocks
    text_len: int
    text_dim: int
    pooled_dim: int = 0


def build(model: str, layers: int, dry: bool, device, dtype) -> Model:
    from diffusers import HunyuanVideoTransformer3DModel, WanTransformer3DModel

    with torch.device(device):
        if model == "hunyuanvideo":
            cfg = hunyuan_config(layers, dry)
            m = HunyuanVideoTransformer3DModel(**cfg)
            spec = catalogue.MODELS[model]
            scale = (spec.num_layers + spec.num_single_layers) / (cfg["num_layers"] + cfg["num_single_layers"])
            text = (8, 32, 8) if dry else (spec.text_len, spec.text_dim, spec.pooled_dim)
        else:
            m = WanTransformer3DModel(**wan_config(model, layers, dry))
            spec = catalogue.MODELS[model]
            scale = spec.num_layers / layers
            text = (8, 32, 0) if dry else (spec.text_len, spec.text_dim, 0)
    return Model(model, m.to(dtype).eval().requires_grad_(False), scale, *text)


def inputs(m: Model, latent: tuple[int, int, int], device, dtype) -> dict:
    gen = torch.Generator(device).manual_seed(0)

    def r(*s):
        return torch.randn(s, generator=gen, device=device, dtype=dtype)

    t, h, w = latent
    x = dict(hidden_states=r(1, 16, t, h, w), timestep=torch.tensor([500], device=device),
             encoder_hidden_states=r(1, m.text_len, m.text_dim), return_dict=False)
    if m.name == "hunyuanvideo":
        mask = torch.arange(m.text_len, device=device)[None] < max(1, m.text_len // 3)  # a short prompt
        x.update(encoder_attention_mask=mask, pooled_projections=r(1, m.pooled_dim),
                 guidance=torch.tensor([6000.0], device=device))
    return x


@contextlib.contextmanager
def peak_memory(device, out: list):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    yield
    out.append(torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"))


@dataclass
class Suite:
    device: torch.device
    dtype: torch.dtype
    dry: bool
    layers: int
    budget: float
    warmup: int
    iters: int
    started: float = field(default_factory=time.perf_counter)
    forwards: dict = field(default_factory=dict)  # (model, latent, window, backend) -> (s per forward, GiB)
    vae: dict = field(default_factory=dict)  # (family, op, frames, h, w) -> s
    skipped: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # section name -> markdown lines (latent ops, window attention)
    flush: Callable[[], None] = lambda: None  # writes the results so far

    def over_budget(self, what: str) -> bool:
        if time.perf_counter() - self.started > self.budget:
            self.skipped.append(f"{what}: time budget spent")
            return True
        return False

    @contextlib.contextmanager
    def attempt(self, what: str) -> Iterator[None]:
        """Run one measurement: any exception (OOM, a kernel that fails to compile or launch, a
        library error) is recorded with what was measured, the memory is released and the suite goes
        on; the results so far are written either way."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every failure is a result; the other sections still run
            self.skipped.append(f"{what}: {type(exc).__name__}: {str(exc)[:160]}")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        finally:
            self.flush()

    def latent(self, latent: tuple[int, int, int]) -> tuple[int, int, int]:
        """The measured latent: the plan's, or a tiny one scaled down from it for --dry-run."""
        if not self.dry:
            return latent
        t, h, w = latent
        return max(1, t // 10), max(2, h // 24 * 2), max(2, w // 24 * 2)

    def window_backends(self) -> list[str]:
        """Every window backend that can run here (the torch reference only in a dry run: at real
        shapes it would only cost time)."""
        return [b for b in WINDOW_BACKENDS if WINDOW_ATTENTION.reason_unusable(b, self.device, self.dtype) is None
                and (b != "torch" or self.dry)]


def measure_forwards(suite: Suite, shapes: dict[str, set]) -> None:
    """``shapes``: model -> {(latent, window or None)}; dense and each window backend for windows."""
    from surf_accel.integrations.window_processors import windowed_attention

    for model, wanted in shapes.items():
        if suite.over_budget(f"forwards of {model}"):
            continue
        built = []
        with suite.attempt(f"building {model}"):
            built.append(build(model, suite.layers, suite.dry, suite.device, suite.dtype))
        if not built:
            continue
        m = built[0]
        for latent, window in sorted(wanted, key=lambda x: (x[0], str(x[1]))):
            if suite.over_budget(f"{model} {latent} {window}"):
                continue
            runs = [(None, None)] if window is None else [(window, b) for b in suite.window_backends()]
            for win, backend in runs:
                if suite.over_budget(f"{model} {latent} {win} {backend or 'dense'}"):
                    continue
                with suite.attempt(f"{model} {latent} {win} {backend or 'dense'}"):
                    x = inputs(m, suite.latent(latent), suite.device, suite.dtype)
                    ctx = windowed_attention(m.module, win, backend=backend) if win else contextlib.nullcontext()
                    mem = []
                    with ctx, torch.no_grad(), peak_memory(suite.device, mem):
                        s = seconds(lambda: m.module(**x), suite.device, suite.warmup, suite.iters)  # noqa: B023
                    suite.forwards[(model, latent, win, backend)] = (s * m.scale, mem[0])
                    print(f"forward {model} latent {latent} window {win} {backend or 'dense'}: {s * m.scale:.3f} s "
                          f"(x{m.scale:g} blocks), peak {mem[0]:.1f} GiB", flush=True)
        del m, built
        if suite.device.type == "cuda":
            torch.cuda.empty_cache()


def best_forward(suite: Suite, model: str, latent, window) -> tuple[float, str] | None:
    rows = [(v[0], b or "dense") for (m, lat, w, b), v in suite.forwards.items()
            if m == model and lat == tuple(latent) and w == (tuple(window) if window else None)]
    return min(rows) if rows else None


# ---- VAE ----------------------------------------------------------------------------------------
def vae_module(family: str, dry: bool, device):
    from diffusers import AutoencoderKLHunyuanVideo, AutoencoderKLWan

    with torch.device(device):
        if family == "wan2.1":
            vae = AutoencoderKLWan(base_dim=8, dim_mult=[1, 1, 1, 1], num_res_blocks=1) if dry else AutoencoderKLWan()
        else:
            vae = (AutoencoderKLHunyuanVideo(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)
                   if dry else AutoencoderKLHunyuanVideo())
    return vae.eval().requires_grad_(False)


def vae_frames(dry: bool) -> tuple[int, int]:
    return (5, 9) if dry else (9, 17)


def measure_vae(suite: Suite, needs: dict[str, set]) -> None:
    """``needs``: family -> {(op, height, width)}; VAE in fp32 (as the pipelines run it) for Wan,
    the pipeline's fp16 for HunyuanVideo; tiling off (the handoff decodes whole frames)."""
    for family, wanted in needs.items():
        if suite.over_budget(f"VAE {family}"):
            continue
        dtype = torch.float32 if family == "wan2.1" or suite.device.type == "cpu" else torch.float16
        built = []
        with suite.attempt(f"building the {family} VAE"):
            built.append(vae_module(family, suite.dry, suite.device).to(dtype))
        if not built:
            continue
        vae = built[0]
        z_ch = vae.config.get("z_dim", None) or vae.config.latent_channels
        for op, h, w in sorted({(op, 32, 32) for op, _, _ in wanted} if suite.dry else wanted):
            for frames in vae_frames(suite.dry):
                if suite.over_budget(f"VAE {family} {op} {h}x{w} {frames} frames"):
                    continue
                lt = (frames - 1) // 4 + 1
                with suite.attempt(f"VAE {family} {op} {h}x{w}x{frames}"):
                    gen = torch.Generator(suite.device).manual_seed(0)
                    if op == "encode":
                        x = torch.randn(1, 3, frames, h, w, generator=gen, device=suite.device, dtype=dtype)
                        fn = lambda: vae.encode(x)  # noqa: E731, B023
                    else:
                        z = torch.randn(1, z_ch, lt, h // 8, w // 8, generator=gen, device=suite.device, dtype=dtype)
                        fn = lambda: vae.decode(z)  # noqa: E731, B023
                    with torch.no_grad():
                        suite.vae[(family, op, frames, h, w)] = seconds(fn, suite.device, 1, 1)
                    print(f"VAE {family} {op} {h}x{w} {frames} frames: {suite.vae[(family, op, frames, h, w)]:.3f} s",
                          flush=True)
        del vae, built


def vae_seconds(suite: Suite, family: str, op: str, frames: int, h: int, w: int) -> float | None:
    """Linear in frames through the two measured counts."""
    if suite.dry:
        h, w = 32, 32
    f1, f2 = vae_frames(suite.dry)
    a, b = suite.vae.get((family, op, f1, h, w)), suite.vae.get((family, op, f2, h, w))
    if a is None or b is None:
        return None
    return a + (b - a) * (frames - f1) / (f2 - f1)


# ---- plans and predictions -----------------------------------------------------------------------
def plans() -> list[tuple[Request, str, cost_model.Estimate]]:
    """(request, preset, estimate): each estimate holds the plan and the baseline's and SURF's FLOPs."""
    out = []
    for req in REQUESTS:
        for name, (cfg, refiner) in presets(req).items():
            est = catalogue.estimate(req.model, req.height, req.width, req.frames, cfg, refiner=refiner)
            out.append((req, name, est))
    return out


def stage_shapes(est: cost_model.Estimate) -> list[tuple[str, tuple, tuple | None, int]]:
    """(model, latent, window, forwards) for SURF's stages, in order."""
    stages = est.plan.stages
    return [(row.model, st.latent_size, st.window, row.steps * row.passes_per_step) for row, st in zip(est.surf, stages)]


def baseline_shapes(req: Request, est: cost_model.Estimate):
    from surf_accel.planner import Request as PlanRequest
    from surf_accel.planner import plan_stages

    fam = catalogue.FAMILIES[catalogue.MODELS[req.model].family]
    base = plan_stages(PlanRequest(req.height, req.width, req.frames, 50), fam.family, fam.scheduler,
                       SurfConfig.identity())
    return [(row.model, st.latent_size, None, row.steps * row.passes_per_step) for row, st in zip(est.baseline, base.stages)]


def vae_needs(req: Request, est: cost_model.Estimate) -> list[tuple[str, int, int]]:
    stages = est.plan.stages
    out = [("decode", stages[-1].height, stages[-1].width)]
    if "vae encode" in est.surf_vae:
        out += [("decode", stages[-2].height, stages[-2].width), ("encode", stages[-1].height, stages[-1].width)]
    return out


def predict(suite: Suite, req: Request, est: cost_model.Estimate) -> tuple[float | None, float | None, str]:
    """(baseline s, SURF s, notes) from measured per-forward times x the plan, plus VAE passes."""
    family = catalogue.MODELS[req.model].family
    notes = []

    def total(shapes, vae_ops) -> float | None:
        t = 0.0
        for model, latent, window, n in shapes:
            got = best_forward(suite, model, latent, window)
            if got is None:
                return None
            t += n * got[0]
            if window:
                notes.append(f"{model} {latent} windows via {got[1]}")
        for op, h, w in vae_ops:
            s = vae_seconds(suite, family, op, req.frames, h, w)
            if s is None:
                return None
            t += s
        return t

    base = total(baseline_shapes(req, est), [("decode", req.height, req.width)])
    surf = total(stage_shapes(est), vae_needs(req, est))
    return base, surf, "; ".join(dict.fromkeys(notes))


# ---- report --------------------------------------------------------------------------------------
def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report(suite: Suite, estimates, extra: dict[str, list[str]]) -> list[str]:
    lines = ["## 1. Transformer seconds per forward (random weights, batch 1, scaled to the real block count)",
             "", f"Measured with {suite.layers} blocks, x (real blocks / measured); peak memory of the reduced model.",
             "", "| model | latent (T, H, W) | tokens | window | attention | s / forward | vs dense | peak GiB |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, latent, window, backend), (s, mem) in sorted(suite.forwards.items(), key=lambda kv: str(kv[0])):
        dense = suite.forwards.get((model, latent, None, None))
        tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
        lines.append(f"| {model} | {latent} | {tokens} | {window or '-'} | {backend or 'dense'} | {fmt(s, 3)} | "
                     f"{fmt(dense[0] / s) if dense else '-'} | {fmt(mem, 1)} |")
    lines += ["", "## 2. VAE at the handoff sizes (seconds; frames measured, 81/129 extrapolated linearly)", "",
              "| family | op | size | frames | s |", "|---|---|---|---|---|"]
    for (family, op, frames, h, w), s in sorted(suite.vae.items()):
        lines.append(f"| {family} | {op} | {h}x{w} | {frames} | {fmt(s, 3)} |")
    lines += ["", *extra.get("ops", ["## 3. Fused latent ops: not run yet"]), "",
              *extra.get("window", ["## 4. Window attention: not run yet"]), "",
              "## 5. Predicted end-to-end time (measured forwards x plan + VAE passes) vs the cost model and the paper",
              "", "| request | preset | baseline s | SURF s | measured speedup | FLOP speedup | paper | windows served by |",
              "|---|---|---|---|---|---|---|---|"]
    for req, name, est in estimates:
        base, surf, notes = predict(suite, req, est)
        paper = PAPER.get(req.label)
        paper_txt = (f"{paper[0]:.0f} s -> {paper[1]:.0f} s ({paper[0] / paper[1]:.2f}x)" if paper
                     else (f"{PAPER_SPEEDUP[req.label]}x" if req.label in PAPER_SPEEDUP else "-"))
        lines.append(f"| {req.label} {req.frames}f | {name} | {fmt(base, 1)} | {fmt(surf, 1)} | "
                     f"{fmt(base / surf) + 'x' if base and surf else '-'} | {est.speedup:.2f}x | {paper_txt} | {notes or '-'} |")
    if suite.skipped:
        lines += ["", "## Skipped or failed", "", *[f"- {s}" for s in suite.skipped]]
    return lines


def plots(suite: Suite, estimates, out: Path) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ["(matplotlib not installed: no plots)"]
    written = []
    rows = sorted(suite.forwards.items(), key=lambda kv: str(kv[0]))
    if rows:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
        ax.barh([f"{m} {lat} {b or 'dense'}" for (m, lat, w, b), _ in rows], [v[0] for _, v in rows])
        ax.set_xlabel("seconds per forward (scaled to the real block count)")
        fig.tight_layout()
        fig.savefig(out / "gpu_suite_forwards.png", dpi=100)
        plt.close(fig)
        written.append("gpu_suite_forwards.png")
    pred = [(f"{r.label} {n}", *predict(suite, r, e)[:2], e.speedup) for r, n, e in estimates]
    pred = [p for p in pred if p[1] and p[2]]
    if pred:
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(pred) + 1.5))
        ys = range(len(pred))
        ax.barh([y - 0.2 for y in ys], [p[1] / p[2] for p in pred], height=0.4, label="measured x plan")
        ax.barh([y + 0.2 for y in ys], [p[3] for p in pred], height=0.4, label="cost model (FLOPs)")
        ax.set_yticks(list(ys), [p[0] for p in pred])
        ax.set_xlabel("speedup over the baseline")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "gpu_suite_speedup.png", dpi=100)
        plt.close(fig)
        written.append("gpu_suite_speedup.png")
    return [f"![{p}]({p})" for p in written]


def ops_section(suite: Suite) -> list[str]:
    """Fused latent ops at the Wan 720p and 480p handoff latents against a measured copy."""
    lines = ["## 3. Fused latent ops vs a measured device-to-device copy", "",
             "| latent | op | backend | ms | GB/s | of copy |", "|---|---|---|---|---|---|"]
    shapes = [(1, 16, 2, 8, 8)] if suite.dry else [(1, 16, 21, 90, 160), (1, 16, 21, 60, 104)]
    dev = suite.device.type
    reps = 3 if suite.dry else 30
    suite.extra["ops"] = lines
    for shape in shapes:
        if suite.over_budget(f"latent ops {shape}"):
            continue
        copy_bw, cases = [], []
        with suite.attempt(f"latent ops {shape}: copy and inputs"):
            gen = torch.Generator().manual_seed(0)
            src = torch.randn(shape, generator=gen).to(suite.device, suite.dtype)
            dst = torch.empty_like(src)
            copy_s = ops_bench.timed(lambda: dst.copy_(src), dev, reps)  # noqa: B023
            copy_bw.append(2 * src.numel() * src.element_size() / copy_s)
            lines.append(f"| {shape} | copy | - | - | {copy_bw[0] / 1e9:.0f} | 1.00 |")
            cases = ops_bench.cases(shape, suite.dtype, dev, gen)
        for name, call, nbytes in cases:
            for backend, reason in OPS[name.split()[0]].explain(dev, suite.dtype).items():
                if reason is None and not suite.over_budget(f"latent ops {shape} {name} {backend}"):
                    with suite.attempt(f"latent ops {shape} {name} {backend}"):
                        s = ops_bench.timed(lambda b=backend, c=call: c(b), dev, reps)
                        lines.append(f"| {shape} | {name} | {backend} | {s * 1e3:.3f} | {nbytes / s / 1e9:.0f} | "
                                     f"{nbytes / s / copy_bw[0]:.2f} |")
    return lines


def window_section(suite: Suite) -> list[str]:
    lines = ["## 4. Window attention on attended pairs vs dense attention (Wan2.1-14B heads)", ""]
    suite.extra["window"] = lines
    if suite.over_budget("window attention op"):
        return lines
    # On CPU the benchmark prints its FLOP table only (pure arithmetic at the real grids).
    args = argparse.Namespace(device=str(suite.device), dtype="bf16" if suite.dtype == torch.bfloat16 else "fp32",
                              backends=[b for b in WINDOW_BACKENDS if b not in ("torch", "cpp")])
    with suite.attempt("window attention op"):
        window_bench.run(args, lines, lambda: suite.over_budget("window attention op, the remaining rows"))
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for gpu_suite.md and the plots")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny configs: the same code path, meaningless times")
    p.add_argument("--layers", type=int, default=2, help="transformer blocks to build (times are scaled up)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which remaining measurements are skipped")
    args = p.parse_args(argv)
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry-run", file=sys.stderr)
        return 2
    suite = Suite(torch.device("cpu" if dry else "cuda"), torch.float32 if dry else torch.bfloat16, dry,
                  args.layers, args.budget, 0 if dry else 1, 1 if dry else 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = "GPU suite: real-shape transformer, VAE, latent-op and window-attention timings"
    machine = torch.cuda.get_device_name(0) if suite.device.type == "cuda" else "CPU (dry run: times meaningless)"

    def lines() -> list[str]:
        return [*_record.provenance(argv, f"; {machine}"),
                f"- window backends measured: {', '.join(suite.window_backends()) or 'none'}; wall time "
                f"{time.perf_counter() - suite.started:.0f} s", "", *report(suite, estimates, suite.extra), ""]

    estimates = plans()
    shapes: dict[str, set] = {}
    needs: dict[str, set] = {}
    for req, _, est in estimates:
        for model, latent, window, _ in stage_shapes(est) + baseline_shapes(req, est):
            shapes.setdefault(model, set()).add((tuple(latent), tuple(window) if window else None))
            if window:  # the dense forward at the same shape, for "vs dense"
                shapes[model].add((tuple(latent), None))
        fam = catalogue.MODELS[req.model].family
        needs.setdefault(fam, set()).update(vae_needs(req, est))
    for model, h, w, frames in EXTRA_SHAPES:
        fam = catalogue.FAMILIES[catalogue.MODELS[model].family].family
        latent = ((frames - 1) // fam.vae_scale_temporal + 1, h // fam.vae_scale_spatial, w // fam.vae_scale_spatial)
        shapes.setdefault(model, set()).add((latent, None))

    from surf_accel.info import report as info_report
    print(info_report(), flush=True)
    # Written after every measurement: a crash, a kill at the time limit or a hung GPU keeps what was measured.
    suite.flush = lambda: _record.write(out / "gpu_suite.md", title, lines(), quiet=True)
    measure_forwards(suite, shapes)
    measure_vae(suite, needs)
    ops_section(suite)
    window_section(suite)
    figures = []
    with suite.attempt("plots"):
        figures = plots(suite, estimates, out)
    _record.write(out / "gpu_suite.md", title, lines() + figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
