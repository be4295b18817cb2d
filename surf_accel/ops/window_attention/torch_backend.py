"""``torch`` backend of ``window_attention``: windows gathered into a padded batch + one SDPA
(``surf_accel.ops.window_reference.window_attention_partitioned``); any device.

``q, k, v``: ``(B, S, heads, D)`` with ``S = T*H*W + num_text``; returns ``(B, S, heads, D)``
contiguous in the input dtype.
"""

from __future__ import annotations

from typing import Optional

import torch

from surf_accel.ops import window_reference


# Host-side tables and data-dependent sizes: an opaque custom op so torch.compile traces a model through it.
@torch.library.custom_op("surf_accel_window::torch_window_attention", mutates_args=())
def _torch_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                            window: list[int], shift: list[int], num_text: int,
                            text_mask: Optional[torch.Tensor], text_lengths: Optional[list[int]]) -> torch.Tensor:
    return window_reference.window_attention_partitioned(q, k, v, grid, window, shift, num_text, text_mask).contiguous()
