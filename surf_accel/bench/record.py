"""Provenance header and writing of a benchmark's results file (machine, date, command)."""

from __future__ import annotations

import datetime
import platform
import shlex
import sys
from pathlib import Path

import torch

from surf_accel import files


def provenance(argv: list[str] | None, machine_note: str = "", program: str | None = None) -> list[str]:
    """Markdown bullet lines: UTC date, machine and torch build, and the command that ran (``program``:
    how it was started, e.g. ``surf-accel bench``; default ``python`` and the script)."""
    args = sys.argv[1:] if argv is None else argv
    prog = program or f"python {shlex.quote(sys.argv[0])}"
    cmd = " ".join([prog, *(shlex.quote(x) for x in args)])
    return [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}, "
            f"torch {torch.__version__}{machine_note}",
            f"- command: `{cmd}`"]


def write(path: Path, title: str, lines: list[str], quiet: bool = False) -> None:
    """``# title``, a blank line, then ``lines``; prints where it wrote unless ``quiet``."""
    files.write_text(path, "\n".join([f"# {title}", "", *lines, ""]))
    if not quiet:
        print(f"wrote {path}")
