"""Timing of a benchmark callable: CUDA events on a GPU, ``perf_counter`` on the CPU."""

from __future__ import annotations

import time

import torch


def seconds(fn, device, warmup: int, iters: int) -> float:
    """Mean seconds per call of ``fn`` after ``warmup`` calls, over ``iters`` calls on ``device``."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) / iters
