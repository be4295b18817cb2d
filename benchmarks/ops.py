"""Fused latent ops: time per backend and achieved bandwidth against a measured copy.

Each op is memory-bound (one read of each input, one write), so the figure of merit is bytes moved
per second over the device's own copy rate, measured in the same run. Shapes: Wan2.1 latents
(16 channels, 21 latent frames) at 720p (90x160) on CUDA; a smaller shape on CPU.

    python benchmarks/ops.py [--device cpu|cuda] [--dtype bf16] [--threads N] [--out benchmarks/results/ops_<device>.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import socket
import sys
import time

import torch

import surf_accel.ops as ops

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def timed(fn, device: str, repeats: int) -> float:
    """Median seconds per call after warm-up."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return sorted(samples)[len(samples) // 2]


def cases(shape, dtype, device, gen):
    b, c, t, h, w = shape

    def r(*s):
        return torch.randn(s, generator=gen).to(device=device, dtype=dtype)

    lat, mo, vu = r(*shape), r(*shape), r(*shape)
    noise_lo, lat_lo = r(b, c, t, h // 2, w // 2), r(b, c, t, h // 2, w // 2)
    noise_hi = r(*shape)
    e = lat.element_size()
    n, n_lo = lat.numel(), noise_lo.numel()
    return [
        ("guided_step (cfg)", lambda be: ops.guided_step(lat, mo, vu, 5.0, 0.6, 0.55, backend=be), 4 * n * e),
        ("reshift_downsample x2", lambda be: ops.reshift_downsample(lat, mo, noise_lo, 0.6, 0.7, 2, backend=be),
         (2 * n + 2 * n_lo) * e),
        ("upsample_mix x2 bilinear", lambda be: ops.upsample_mix(lat_lo, noise_hi, 0.5, 2, "bilinear", backend=be),
         (n_lo + 2 * n) * e),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bf16", choices=list(DTYPES))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (torch and cpp alike)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = args.device, DTYPES[args.dtype]
    shape = (1, 16, 21, 90, 160) if device == "cuda" else (1, 16, 5, 64, 96)
    repeats = args.repeats or (50 if device == "cuda" else 10)
    gen = torch.Generator().manual_seed(0)

    src = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    dst = torch.empty_like(src)
    copy_s = timed(lambda: dst.copy_(src), device, repeats)
    copy_bw = 2 * src.numel() * src.element_size() / copy_s

    rows = []
    for name, call, nbytes in cases(shape, dtype, device, gen):
        base = None
        for backend, reason in ops.OPS[name.split()[0]].explain(device, dtype).items():
            if reason is not None:
                rows.append((name, backend, "-", "-", "-", f"unavailable: {reason}"))
                continue
            s = timed(lambda: call(backend), device, repeats)
            base = s if backend == "torch" else base
            rows.append((name, backend, f"{s * 1e3:.3f}", f"{nbytes / s / 1e9:.1f}", f"{nbytes / s / copy_bw:.2f}", ""))
        # speed-up over the torch reference, measured in this same run
        rows = [(*r[:5], r[5] or (f"{base / (float(r[2]) / 1e3):.2f}x vs torch" if base and r[2] != "-" else ""))
                if r[0] == name else r for r in rows]

    machine = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    header = [
        f"# Fused latent ops, {device}, {args.dtype}, shape {shape}",
        "",
        f"- machine: {socket.gethostname()} ({machine}); torch {torch.__version__}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- command: `python {' '.join(sys.argv)}`",
        f"- measured copy bandwidth (read + write): {copy_bw / 1e9:.1f} GB/s",
        "",
        "| op | backend | ms | GB/s | of copy | note |",
        "|---|---|---|---|---|---|",
    ]
    text = "\n".join(header + [f"| {' | '.join(r)} |" for r in rows]) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
