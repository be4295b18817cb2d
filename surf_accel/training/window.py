"""Shifted-window attention for training, with the attention set of inference.

Inference installs ``surf_accel.integrations.window_processors.windowed_attention``: one shared
processor on every block's ``attn1``, shift 0 / ``window // 2`` alternating by block, the token grid
read by a forward pre-hook. Its ops (``surf_accel.ops.window_attention``, every backend) are custom
ops without an autograd formula, so they cannot be trained through. ``training_windows`` installs
the very same state (``windowed_attention``: shifts, grid hook, originals restored on exit) and
swaps only the processor for one whose attention call is the ``torch`` backend's own function
(``window_reference.window_attention_partitioned``: gather windows, SDPA, gather back), which
autograd differentiates. ``tests/training`` checks its output against the inference processor's.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from surf_accel.integrations.window_processors import STATE_ATTR, WanWindowAttnProcessor, windowed_attention
from surf_accel.ops.window_reference import window_attention_partitioned


class TrainableWanWindowAttnProcessor(WanWindowAttnProcessor):
    """``WanWindowAttnProcessor`` with a differentiable attention call (same windows, same shifts)."""

    def attend(self, query, key, value, grid, window, shift) -> torch.Tensor:
        return window_attention_partitioned(query, key, value, grid, window, shift)


@contextlib.contextmanager
def training_windows(transformer, window: Optional[tuple[int, int, int]]) -> Iterator[None]:
    """Within the context ``transformer`` (a ``WanTransformer3DModel``, not a DDP wrapper) attends in
    shifted windows of ``window`` tokens, differentiably; ``None``: dense attention, nothing changes."""
    if window is None:
        yield
        return
    with windowed_attention(transformer, tuple(window)):
        state = getattr(transformer, STATE_ATTR)
        proc = TrainableWanWindowAttnProcessor(state)
        for attn in state.originals:
            attn.set_processor(proc)
        yield
