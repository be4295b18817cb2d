"""torch.compile with SURF (docs/design.md 4.1): regional (``transformer.compile_repeated_blocks()``),
in place (``transformer.compile()``) or wrapped (``pipe.transformer = torch.compile(transformer)``).

SURF keeps every per-step value a tensor (timestep, latents, guidance), so dynamo compiles once per
distinct stage resolution (with its default automatic dynamic shapes, the second resolution's recompile
usually serves all later ones) and never per step. What can still recompile per step is something
else reaching the compiled code with a Python number that changes every step (a hook, a cache's step
counter) under ``dynamic=False``, which specialises every scalar: dynamo then recompiles each step
until ``torch._dynamo.config.recompile_limit`` and falls back to eager, slowly and quietly.
``compile_watch`` turns that into a WARNING naming the guard that failed and the fix. A cache adds
compiles of its own at later steps, each once: diffusers' state lookup is guarded on how many branch
states exist (the second step recompiles once, after the uncond state appeared during the first), and
its first skip compiles the skip path. So the watch warns when dynamo compiles at three or more of a
stage's later steps, which a per-step recompile does and a cache does not.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger("surf_accel")


def is_compiled(model) -> bool:
    """Whether ``model`` (a ``torch.compile`` wrapper, or a module with compiled submodules) runs compiled code."""
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return True
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def _new_guard_failures(before: dict) -> list[str]:
    from torch._dynamo.utils import guard_failures  # dynamo loads only for a compiled model

    out = []
    for code, reasons in guard_failures.items():
        out.extend(reasons[len(before.get(code, ())):])
    return out


@contextlib.contextmanager
def compile_watch(pipe, model, stage, first_timestep) -> Iterator[None]:
    """Around one stage's steps: a WARNING if dynamo compiles at three or more steps after the stage's
    first (``pipe._current_timestep``, set by the runner per step, tells the step). No-op for an
    uncompiled model."""
    if not is_compiled(model):
        yield
        return
    # dynamo loads only for a compiled model
    from torch._dynamo import callback_handler
    from torch._dynamo.utils import guard_failures

    first = float(first_timestep)
    before = {code: list(reasons) for code, reasons in guard_failures.items()}
    late = []

    def on_compile(args) -> None:
        t = pipe._current_timestep
        if t is not None and float(t) != first:
            late.append(float(t))

    callback_handler.register_start_callback(on_compile)
    try:
        yield
    finally:
        callback_handler.remove_start_callback(on_compile)
    if len(set(late)) >= 3:
        reasons = "; ".join(r.split("\n")[0].strip() for r in _new_guard_failures(before)[-3:]) or "unknown"
        logger.warning(
            "surf_accel: torch.compile recompiled %d time(s) inside the %s stage after its first step (timesteps %s): "
            "something that changes every step reaches the compiled code (guard failures: %s). SURF needs one "
            "compile per stage resolution, none per step: compile without dynamic=False (the default lets dynamo "
            "generalise a changing number after one recompile) or pass that value as a tensor",
            len(late), stage.name, sorted(set(late), reverse=True), reasons)
