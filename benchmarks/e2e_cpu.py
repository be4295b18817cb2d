"""End-to-end CPU benchmark: baseline vs SURF on a tiny random-weight Wan, in one process.

The transformer is small in width but runs at token counts where attention is a large share of
the FLOPs (as at 720p/1080p on the real models), so the measured ratio can be set beside the cost
model's prediction for the same shapes. Speed does not depend on weight values. Timings are the
minimum over ``--reps`` alternating runs (the machine may be shared); only ratios are reported.

    python benchmarks/e2e_cpu.py [--reps 3] [--threads 2] [--out benchmarks/results/e2e_cpu.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

import surf_accel  # noqa: E402
from surf_accel import SurfConfig, files  # noqa: E402
from surf_accel.catalogue import estimate  # noqa: E402
from surf_accel.cost_model import TransformerSpec, forward_flops, measure_vae  # noqa: E402
from surf_accel.schedulers import scheduler_spec  # noqa: E402
from surf_accel.integrations.wan import WanAdapter  # noqa: E402


def build(width_heads=4, head_dim=32, layers=2, ffn=512):
    from tests.tiny_pipelines import tiny_wan_t2v

    pipe = tiny_wan_t2v("unipc", shift=3.0, heads=width_heads, head_dim=head_dim, num_layers=layers, ffn_dim=ffn)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--output-type", default="latent", choices=("latent", "np"),
                    help="latent (default): leave the final VAE decode out on both sides")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "e2e_cpu.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    pipe = build()
    H, W, F, N = args.height, args.width, args.frames, args.steps
    opt = (H // 2, W // 2)
    configs = {
        "paper-like (k=N/4, x2, pixel, N/4 refine)": SurfConfig(optimal_size=opt, preview_steps=N, switch_step=N // 4,
                                                               refine_steps=N // 4),
        "latent handoff": SurfConfig(optimal_size=opt, preview_steps=N, switch_step=N // 4, refine_steps=N // 4,
                                     handoff="latent"),
        "no refine (preview only)": SurfConfig(optimal_size=opt, preview_steps=N, switch_step=N // 4, refine_steps=0),
    }
    kw = dict(prompt="a red circle moving left", negative_prompt="ugly", height=H, width=W, num_frames=F,
              num_inference_steps=N, guidance_scale=4.0, max_sequence_length=16, output_type=args.output_type)

    spec = TransformerSpec.from_config(pipe.transformer.config, "tiny-wan", text_len=16)
    vae_spec = measure_vae(pipe.vae, device="cpu")
    fam = WanAdapter().family_spec(pipe)
    sched = scheduler_spec(pipe.scheduler)
    lt = (F - 1) // 4 + 1
    fl = forward_flops(spec, (lt, H // 8, W // 8))
    attn_share = fl["attention"] / (fl["attention"] + fl["linear"])

    def run_base():
        pipe(generator=torch.Generator().manual_seed(0), **kw)

    def run_surf(cfg):
        def f():
            with surf_accel.patched(pipe, cfg):
                pipe(generator=torch.Generator().manual_seed(0), **kw)
        return f

    # Component times: one transformer forward per latent size, and the VAE passes. Composing them
    # with the plan's step counts predicts each run's time from its parts, which separates what the
    # FLOP count misses on a CPU (per-call overhead, memory-bound small convolutions) from any
    # overhead of the stage loop itself.
    comp = {}
    emb = torch.randn(1, 16, pipe.transformer.config.text_dim)

    def t_forward(lat):
        if ("fwd", lat) not in comp:
            x = torch.randn(1, 16, *lat)
            with torch.no_grad():
                f = lambda: pipe.transformer(hidden_states=x, timestep=torch.tensor([500.0]),  # noqa: E731
                                             encoder_hidden_states=emb, return_dict=False)
                f()
                comp[("fwd", lat)] = min(timed(f) for _ in range(3))
        return comp[("fwd", lat)]

    def t_vae(kind, lat):
        if (kind, lat) not in comp:
            with torch.no_grad():
                z = torch.randn(1, 16, *lat)
                if kind == "decode":
                    comp[(kind, lat)] = min(timed(lambda: pipe.vae.decode(z)) for _ in range(2))
                else:
                    v = torch.randn(1, 3, F, lat[1] * 8, lat[2] * 8)
                    comp[(kind, lat)] = min(timed(lambda: pipe.vae.encode(v)) for _ in range(2))
        return comp[(kind, lat)]

    def composed(plan, cfg):
        total = sum(st.steps * 2 * t_forward(tuple(st.latent_size)) for st in plan.stages)
        if cfg.refine_steps > 0 and cfg.handoff == "pixel":
            total += t_vae("decode", tuple(plan.stages[-2].latent_size))
            total += t_vae("encode", tuple(plan.stages[-1].latent_size))
        if args.output_type != "latent":
            total += t_vae("decode", tuple(plan.stages[-1].latent_size))
        return total

    run_base()  # warm-up
    rows = []
    for name, cfg in configs.items():
        run_surf(cfg)()  # warm-up
        base_t, surf_t = [], []
        for _ in range(args.reps):
            base_t.append(timed(run_base))
            surf_t.append(timed(run_surf(cfg)))
        est = estimate(spec, H, W, F, cfg, steps=N, guidance=True, vae=vae_spec, family=fam, scheduler=sched,
                       decode_output=args.output_type != "latent")
        base_plan = estimate(spec, H, W, F, SurfConfig.identity(), steps=N, vae=vae_spec, family=fam,
                             scheduler=sched).plan
        comp_speedup = composed(base_plan, SurfConfig.identity()) / composed(est.plan, cfg)
        rows.append((name, min(base_t), min(surf_t), min(base_t) / min(surf_t), est.speedup, comp_speedup,
                     est.plan.describe().splitlines()))
        print(f"{name}: baseline {min(base_t):.3f}s surf {min(surf_t):.3f}s measured {rows[-1][3]:.2f}x "
              f"predicted {est.speedup:.2f}x from-components {comp_speedup:.2f}x", flush=True)

    lines = [
        "# End-to-end CPU benchmark: baseline vs SURF on a tiny random-weight Wan",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch threads {args.threads}, "
        f"torch {torch.__version__}, python {platform.python_version()}",
        f"- command: `python benchmarks/e2e_cpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- request: {H}x{W} px, {F} frames (latent {lt}x{H // 8}x{W // 8}, {fl['tokens']} tokens), {N} steps, "
        "CFG 4 (2 passes per step), UniPC",
        f"- transformer: {spec.num_layers} layers, width {spec.dim}, FFN {spec.ffn_dim}, {spec.num_heads} heads; "
        f"attention is {attn_share:.0%} of a target-size step's FLOPs",
        f"- output_type {args.output_type!r}"
        + (" (final VAE decode left out on both sides; the pixel handoff's VAE round trip is counted)"
           if args.output_type == "latent" else ""),
        f"- timings: minimum of {args.reps} alternating runs each; only ratios are meaningful",
        "",
        "| SURF config | measured speedup | predicted (FLOP cost model) | measured / predicted "
        "| predicted from measured component times |",
        "|---|---|---|---|---|",
    ]
    for name, b, s, m, p, c, _ in rows:
        lines.append(f"| {name} | {m:.2f}x | {p:.2f}x | {m / p:.2f} | {c:.2f}x |")
    lines += ["", "Component times (one call, batch 1; ratios between them are what matter):", ""]
    for (kind, lat), t in sorted(comp.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        what = "transformer forward" if kind == "fwd" else f"VAE {kind}"
        fl_c = forward_flops(spec, lat) if kind == "fwd" else None
        lines.append(f"- {what} at latent {lat}: {t * 1000:.0f} ms"
                     + (f" ({(fl_c['linear'] + fl_c['attention']) / 1e9:.2f} GFLOP)" if fl_c else ""))
    lines += ["", "## Cost model for the real model: Wan2.1-14B, 81 frames, 50 steps with CFG (UniPC, shift 5)", "",
              "1080p is 1088x1920, the nearest size on Wan's 16-pixel grid. Windows are the paper's temporal-only "
              "windows (4 latent frames, whole H and W), in the refine stage only. A trained refiner is counted "
              "as a Wan2.1-1.3B-sized DiT without CFG (the paper's is ~1B).", "",
              "| size | refiner | windows | baseline PFLOP | SURF PFLOP | predicted speedup | ceiling |",
              "|---|---|---|---|---|---|---|"]
    for h, w in ((720, 1280), (1088, 1920)):
        for ref in (None, "wan2.1-1.3b"):
            for win in (None, (4, 1000, 1000)):
                e = estimate("wan2.1-14b", h, w, 81, SurfConfig() if win is None else SurfConfig(window=win),
                             refiner=ref)
                lines.append(f"| {h}x{w} | {'trained, 1.3B-sized' if ref else 'training-free (14B, CFG)'} | "
                             f"{'4 frames' if win else 'dense'} | {e.baseline_total / 1e15:.0f} | "
                             f"{e.surf_total / 1e15:.0f} | {e.speedup:.2f}x | {e.floor:.2f}x |")
    lines += ["", "The paper reports 12.58x at 720p (preview 10 + 30 steps ~252 s of Wan's 3497 s, i.e. 7.2%; "
              "the model gives 7.5%) and ~43x at 1080p for the trained refiner with windows.", ""]
    lines += ["", "Stage plans:", ""]
    for name, *_, plan in rows:  # noqa: B007
        lines.append(f"- {name}:")
        lines += [f"    - {ln}" for ln in plan]
    text = "\n".join(lines) + "\n"
    files.write_text(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
