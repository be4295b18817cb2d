"""``python -m surf_accel.info [--check [--real]]``: versions, devices, the extension's state, and which
backend serves each op on each device (and why the others do not); ``--check`` runs every available
backend against the fp32 torch reference on this device (``surf_accel.ops.correctness``)."""

from __future__ import annotations

import argparse
import importlib.metadata
import platform

import torch

from surf_accel import __version__, _extension
from surf_accel.ops import OPS, correctness
from surf_accel.ops.backends import triton_interpreted
from surf_accel.ops.window_attention import VARLEN_LIBRARIES, import_reason, varlen_reason


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    return found


def backend_table(device: str, dtype: torch.dtype = torch.float16) -> list[tuple[str, str, dict[str, str]]]:
    """Rows (op, automatic choice, backend -> "yes" or "no: reason") for ``device`` and ``dtype``; an
    op that ranks its own backends adds why to its choice."""
    rows = []
    for name, op in OPS.items():
        try:
            chosen = op.choose(torch.device(device), dtype)[0]
            if op.preference is not None:
                chosen += f" ({op.preference(torch.device(device), dtype)[1]})"
        except RuntimeError as exc:  # forced by SURF_ACCEL_BACKEND, or nothing usable: show why
            chosen = f"none ({exc})"
        cells = {}
        for backend, reason in op.explain(device, dtype).items():
            interp = " (interpreted)" if backend == "triton" and device == "cpu" else ""
            cells[backend] = f"yes{interp}" if reason is None else f"no: {reason}"
        rows.append((name, chosen, cells))
    return rows


def varlen_table() -> list[str]:
    """Whether each varlen attention library imports and, on a CUDA device, passes its test call."""
    lines = ["varlen attention libraries (window attention's partition path on CUDA):"]
    for lib in VARLEN_LIBRARIES:
        reason = import_reason(lib)
        if reason is not None:
            cell = f"no: {reason}"
        elif torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
            probes = {name: varlen_reason(lib, device, dtype)
                      for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))}
            cell = "; ".join(f"{name}: {'yes' if r is None else f'no: {r}'}" for name, r in probes.items())
        else:
            cell = "imports; no CUDA device to test it on"
        lines.append(f"  {lib:<11}{cell}")
    return lines


def report() -> str:
    lines = [
        f"surf_accel {__version__}",
        f"python {platform.python_version()} on {platform.machine()} ({platform.system()})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), triton {_version('triton')}, "
        f"diffusers {_version('diffusers')}, transformers {_version('transformers')}, "
        f"flash-attn {_version('flash-attn')}, xformers {_version('xformers')}",
        f"devices: {', '.join(devices())}"
        + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""),
        f"extension surf_accel._C: {_extension.status().describe()}",
        f"triton mode: {'interpreter (TRITON_INTERPRET=1)' if triton_interpreted() else 'compiled'}",
        *varlen_table(),
    ]
    for device in devices():
        lines.append(f"\nbackends on {device} (fp16 inputs); automatic choice first:")
        for name, chosen, cells in backend_table(device):
            lines.append(f"  {name:<20} -> {chosen}")
            lines.extend(f"      {backend:<7}{cell}" for backend, cell in cells.items())
    return "\n".join(lines)


def check(real: bool, budget_s: float) -> int:
    """Run the correctness check (``surf_accel.ops.correctness``) on the best device here and print
    its table; non-zero when a backend errs beyond its tolerance or raises."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    real = real or device.type == "cuda"
    print(f"\ncorrectness on {device} ({'real' if real else 'small'} shapes) against the fp32 torch reference; "
          "error = max |out - ref| / max |ref|:")
    print("\n".join(correctness.TABLE_HEADER))
    rows = correctness.run(device, real, budget_s, lambda row: print(correctness.table_row(row), flush=True))
    print(correctness.summary(rows))
    return 1 if correctness.failed(rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m surf_accel.info", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="also run every available backend against the fp32 torch reference on this device")
    parser.add_argument("--real", action="store_true",
                        help="with --check: real model shapes (the default on a GPU; small shapes on the CPU)")
    parser.add_argument("--budget", type=float, default=float("inf"), help="with --check: seconds to spend at most")
    args = parser.parse_args(argv)
    print(report())
    return check(args.real, args.budget) if args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
