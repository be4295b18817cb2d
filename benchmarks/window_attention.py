"""Shifted-window attention against dense attention at real refiner shapes (docs/design.md 6, issue 4).

Shapes: Wan2.1-14B self-attention (40 heads x 128) on the 720p token grid 21 x 45 x 80 (81 frames,
1280 x 720, VAE 4x8x8, patch 1x2x2) and the 1080p grid 21 x 68 x 120 (1920 x 1088). Windows, in
tokens: the paper's temporal windows (W_t latent frames, whole frame) and a 3D setting, each with
shift 0 and the shifted variant (window // 2).

FLOPs count the attended (query, key) pairs: 4 * pairs * D * heads (Q K^T and P V). On a GPU each
window backend is timed against dense attention (SDPA with the flash kernel, and flash-attn when
installed) on the same inputs; the table gives time, speed-up over dense, the ideal speed-up
(dense pairs / window pairs), achieved TFLOP/s on the attended pairs, and that rate relative to the
measured dense rate. On CPU only the FLOP table is printed (and written).

    python benchmarks/window_attention.py [--device cuda] [--dtype bf16] [--budget SECONDS] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _timing import seconds
from surf_accel.ops import window_attention
from surf_accel.ops.window_attention import WINDOW_ATTENTION, varlen_reason, window_seqlens

HEADS, HEAD_DIM = 40, 128
GRIDS = {"720p": (21, 45, 80), "1080p": (21, 68, 120)}
WINDOWS = {"temporal wt=3": (3, 1 << 30, 1 << 30), "temporal wt=7": (7, 1 << 30, 1 << 30),
           "3d 7x16x16": (7, 16, 16)}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def clamp(grid, window):
    return tuple(min(w, g) for w, g in zip(window, grid))


def pairs(grid, window, shift) -> int:
    return sum(n * n for n in window_seqlens(grid, window, shift))


def flops(n_pairs: int) -> float:
    return 4.0 * n_pairs * HEAD_DIM * HEADS


def time_ms(fn, warmup: int = 2, iters: int = 5) -> float:
    return 1e3 * seconds(fn, torch.device("cuda"), warmup, iters)


def dense_fns(q, k, v):
    fns = {}
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def sdpa():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    fns["dense SDPA"] = sdpa
    if varlen_reason("flash-attn", q.device, q.dtype) is None:  # imported and tested once, as the dispatch does
        from flash_attn import flash_attn_func
        fns["dense flash-attn"] = lambda: flash_attn_func(q, k, v)
    return fns


def run(args, lines: list[str] | None = None, over_budget: Callable[[], bool] = lambda: False) -> list[str]:
    """The table's lines, appended to ``lines`` as they are measured (a caller may write them out
    meanwhile). Once ``over_budget()`` says so, the remaining timings are listed as skipped; a
    backend that raises is listed with its error and the others are still timed."""
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    lines = [] if lines is None else lines
    header = ["grid", "window", "shift", "window pairs / dense", "window TFLOP"]
    if device.type == "cuda":
        header += ["backend", "ms", "dense ms", "speed-up", "ideal", "TFLOP/s", "vs dense rate"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for gname, grid in GRIDS.items():
        n = grid[0] * grid[1] * grid[2]
        dense_pairs = n * n
        q = k = v = None
        dense = {}
        if device.type == "cuda":
            if over_budget():
                lines.append(f"| {gname} {grid} | skipped: time budget spent |")
                continue
            gen = torch.Generator(device).manual_seed(0)
            q, k, v = (torch.randn(1, n, HEADS, HEAD_DIM, device=device, dtype=dtype, generator=gen) for _ in range(3))
            for name, fn in dense_fns(q, k, v).items():
                dense[name] = time_ms(fn)
            best_dense = min(dense.values())
            dense_rate = flops(dense_pairs) / (best_dense * 1e-3) / 1e12
            for name, ms in dense.items():
                lines.append(f"| {gname} {grid} | dense | - | 1 | {flops(dense_pairs) / 1e12:.1f} | {name} | "
                             f"{ms:.2f} | {ms:.2f} | 1.00 | 1.00 | {flops(dense_pairs) / (ms * 1e-3) / 1e12:.0f} | "
                             f"{(flops(dense_pairs) / (ms * 1e-3) / 1e12) / dense_rate:.2f} |")
        for wname, window in WINDOWS.items():
            window = clamp(grid, window)
            for shift in ((0, 0, 0), tuple(w // 2 if w < g else 0 for w, g in zip(window, grid))):
                p = pairs(grid, window, shift)
                row = [f"{gname} {grid}", f"{wname} {window}", str(shift), f"{p / dense_pairs:.4f}",
                       f"{flops(p) / 1e12:.2f}"]
                if device.type != "cuda":
                    lines.append("| " + " | ".join(row) + " |")
                    continue
                for backend in args.backends:
                    reason = WINDOW_ATTENTION.reason_unusable(backend, device, dtype,
                                                              (q, k, v, grid, window, shift, 0, None, None))
                    if reason is None and over_budget():
                        reason = "skipped: time budget spent"
                    if reason is not None:
                        lines.append("| " + " | ".join(row + [backend, f"n/a: {reason}"] + [""] * 5) + " |")
                        continue
                    try:
                        ms = time_ms(lambda b=backend, w=window, s=shift:  # noqa: B023
                                     window_attention(q, k, v, grid, w, s, backend=b))
                    except Exception as exc:  # noqa: BLE001 - a failing backend is a row of the table
                        lines.append("| " + " | ".join(row + [backend, f"raised {type(exc).__name__}: "
                                                                       f"{str(exc)[:120]}"] + [""] * 5) + " |")
                        torch.cuda.empty_cache()
                        continue
                    rate = flops(p) / (ms * 1e-3) / 1e12
                    lines.append("| " + " | ".join(row + [
                        backend, f"{ms:.2f}", f"{best_dense:.2f}", f"{best_dense / ms:.2f}",
                        f"{dense_pairs / p:.2f}", f"{rate:.0f}", f"{rate / dense_rate:.2f}"]) + " |")
                    print(lines[-1], flush=True)
        q = k = v = None  # free the inputs before the next grid
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    parser.add_argument("--backends", nargs="+", default=["triton", "cuda", "flex", "torch"])
    parser.add_argument("--out", default=None, help="results file (default benchmarks/results/window_attention_<device>.md)")
    parser.add_argument("--budget", type=float, default=float("inf"), help="seconds after which timings are skipped")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: printing the FLOP table only", file=sys.stderr)
        args.device = "cpu"
    deadline = time.perf_counter() + args.budget
    lines = run(args, over_budget=lambda: time.perf_counter() > deadline)
    table = "\n".join(lines)
    print(table)
    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"window_attention_{torch.device(args.device).type}.md")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(f"# Shifted-window attention vs dense\n\nmachine: {machine}; torch {torch.__version__}; "
                f"dtype {args.dtype}; {HEADS} heads x {HEAD_DIM}, batch 1\n"
                f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}\n"
                f"command: python {' '.join(sys.argv)}\n\n{table}\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
