"""What every Triton launcher shares. A launcher builds a ``Launch`` (kernel, grid, arguments) and
runs it with ``run``: the launch (and an autotuner's benchmark runs) happens on the inputs' device,
not on whichever CUDA device is current. ``aot_spec`` turns the same ``Launch``, built from meta
tensors of real shapes, into a variant for scripts/check_triton_aot.py, so the ahead-of-time check
compiles what the JIT would."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple

import torch


class Launch(NamedTuple):
    kernel: Any  # a @triton.jit function or an autotuner
    grid: tuple[int, ...] | Callable[[dict], tuple[int, ...]]
    args: tuple
    kwargs: dict[str, Any]  # constexprs, num_warps, num_stages


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for a CUDA device (Triton launches on the current device and
    reads its stream), nothing for the CPU (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def run(launch: Launch, device: torch.device) -> None:
    with device_guard(device):
        launch.kernel[launch.grid](*launch.args, **launch.kwargs)


def aot_spec(launch: Launch, label: str, main: bool) -> dict:
    """A compile variant: ``kernel``, ``args`` (every kernel argument by name: tensors, ints, floats
    and constexpr values, as the launcher passes them; scripts/check_triton_aot.py specialises them
    as Triton's JIT does), ``num_warps``, ``options``, ``label``, ``dtype`` and ``main`` (the variant
    runs on the default path: it must not spill)."""
    kwargs = dict(launch.kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    options = {"num_stages": kwargs.pop("num_stages")} if "num_stages" in kwargs else {}
    args = {**dict(zip(launch.kernel.arg_names, launch.args)), **kwargs}
    dtype = next(str(a.dtype).removeprefix("torch.") for a in launch.args if isinstance(a, torch.Tensor))
    return {"kernel": launch.kernel, "args": args, "num_warps": num_warps, "options": options, "label": label,
            "dtype": dtype, "main": main}
