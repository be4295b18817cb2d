"""Sparse attention for SURF's preview (docs/design.md 4.1) on a transformer: the window processors
with the sliding-tile local + global ``SparsePattern`` of ``surf_accel.ops.sparse_attention`` in
place of the windows.

The block mask is rebuilt from the grid the transformer's input has (read by the window
processors' grid hook), so it follows SURF's switch from the optimal to the low resolution.
``sparse_attention(transformer, pattern)`` installs it (the context-manager form restores the
original processor objects); ``SurfConfig(preview_attention=pattern)`` runs it on the preview only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from surf_accel.family import attention_spec
from surf_accel.integrations import window_processors as wp
from surf_accel.ops.sparse_attention import SparsePattern, _op

STATE_ATTR = "_surf_sparse_attention"
# diffusers' own processors of the attention modules the pattern takes over; anything else is the
# user's (a sparse-attention processor, say), which the sparse preview must not silently replace


@dataclass
class SparseState(wp.WindowState):
    """The window processors' state (grid hook, originals) with the pattern in place of windows."""

    pattern: SparsePattern = field(default_factory=SparsePattern)


class WanSparseAttnProcessor(wp.WanWindowAttnProcessor):
    """Wan ``attn1`` (projections, norms and RoPE as the window processor) with the sparse pattern."""

    def attend(self, query, key, value, grid, window, shift) -> torch.Tensor:
        return _op(query, key, value, grid, self.state.pattern)


class HunyuanVideoSparseAttnProcessor(wp.HunyuanVideoWindowAttnProcessor):
    """HunyuanVideo's joint attention with the sparse pattern on the video tokens."""

    def attend(self, query, key, value, grid, window, shift, num_text, text_mask, text_lengths) -> torch.Tensor:
        return _op(query, key, value, grid, self.state.pattern, num_text, text_mask)


def apply_sparse_attention(transformer, pattern: SparsePattern) -> SparseState:
    """Give ``transformer``'s video self-attention (Wan ``attn1``, HunyuanVideo's joint attention) the
    sparse ``pattern``. Refused (``ValueError``) where those modules carry a processor other than
    diffusers' own: that is the user's attention (say, their own sparse processor), and SURF keeps it
    for the preview when ``SurfConfig.preview_attention`` is ``None``."""
    if not isinstance(pattern, SparsePattern):
        raise TypeError(f"pattern must be a SparsePattern, got {type(pattern).__name__}")
    spec = attention_spec(transformer)
    if getattr(transformer, STATE_ATTR, None) is not None:
        raise RuntimeError("sparse attention is already applied to this transformer; remove_sparse_attention first")
    if getattr(transformer, wp.STATE_ATTR, None) is not None:
        raise RuntimeError("window attention is applied to this transformer: sparse and window attention both "
                           "take the self-attention processors; remove the windows first")
    custom = {type(a.processor).__name__ for a in spec.targets(transformer)} - set(spec.default_processors)
    if custom:
        raise ValueError(f"the sparse preview attention would replace the attention processors {sorted(custom)} set "
                         "on this transformer; keep them for the preview with SurfConfig(preview_attention=None), or "
                         "set diffusers' default processors (transformer.set_default_attn_processor()) first")
    state = SparseState((1, 1, 1), None, pattern=pattern)  # windows unused: the pattern decides
    wp.install_processors(transformer, spec, state, spec.sparse_processor, STATE_ATTR, shifted_blocks=False)
    return state


def remove_sparse_attention(transformer) -> None:
    """Put back the original processor objects and drop the grid hook (no-op if not applied)."""
    attention_spec(transformer)
    wp.restore_processors(transformer, STATE_ATTR)


@contextlib.contextmanager
def sparse_attention(transformer, pattern: SparsePattern) -> Iterator[SparseState]:
    """``with sparse_attention(transformer, pattern):`` the pattern inside, the original processors after."""
    state = apply_sparse_attention(transformer, pattern)
    try:
        yield state
    finally:
        remove_sparse_attention(transformer)


__all__ = ["HunyuanVideoSparseAttnProcessor", "SparsePattern", "SparseState", "WanSparseAttnProcessor",
           "apply_sparse_attention", "remove_sparse_attention", "sparse_attention"]
