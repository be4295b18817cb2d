"""Sparse attention for SURF's preview (docs/design.md 4.1): a spatio-temporally local + global pattern
of the sliding-tile family as ``torch.nn.attention.flex_attention`` block masks.

``SparsePattern(tile, window, global_frames)`` on the ``(T, H, W)`` token grid (after patchify,
t-major as diffusers flattens it):

- video tokens are grouped into tiles of ``tile = (tt, th, tw)`` tokens; each must divide its grid
  axis at every preview resolution (else ``ValueError`` naming a tile that fits);
- local: a query in tile ``c`` attends to the keys in the ``window = (wt, wh, ww)`` tiles around
  ``c`` (``c - w // 2`` onwards), slid inward at the grid's edges so that every query sees the same
  number of tiles (sliding tile attention); a window of at least an axis' tile count covers it,
  so a window covering the grid is dense attention;
- global: the tokens of the first ``global_frames`` latent frames attend to every key and every
  query attends to them (an attention sink on the first frame, which Wan's causal VAE encodes alone);
- text (HunyuanVideo's joint attention): video queries see all valid text keys and text queries
  every valid key, as the window processors do; padded text is never attended.

``attend(q, k, v, grid, pattern, num_text, text_mask)``: ``q, k, v`` ``(B, S, heads, D)`` with
``S = T*H*W + num_text`` (video tokens t-major, then text), ``text_mask`` ``(B, num_text)`` bool or
None; returns ``(B, S, heads, D)`` in the input dtype. ``block_mask`` builds the ``BlockMask``
from the grid of the call, so it follows SURF's switch from the optimal to the low resolution;
its block tables (``FLEX_BLOCK``-token blocks, ``surf_accel.ops.window_attention.flex``) are cached
per (grid, pattern). On CPU flex runs eagerly (tests); on CUDA the GPU fast path is
torch.compile's fused flex kernel (Triton), which skips the blocks the pattern leaves out. The
processors that install it on a transformer are in ``surf_accel.integrations.accelerators.sparse_attention``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from surf_accel.ops.window_attention.flex import FLEX_BLOCK, flex_block_tables, run_flex

def _positive_triple(name: str, value) -> tuple[int, int, int]:
    if isinstance(value, torch.Tensor) or not isinstance(value, Sequence) or len(value) != 3 or any(
            isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in value):
        raise ValueError(f"{name} must be three ints >= 1 (T, H, W) in tokens, got {value!r}")
    return tuple(int(x) for x in value)


@dataclass(frozen=True)
class SparsePattern:
    """Sliding-tile local + global attention (module docstring). ``tile`` in tokens, ``window`` in
    tiles, ``global_frames`` in latent frames (0: none)."""

    tile: tuple[int, int, int] = (1, 4, 4)
    window: tuple[int, int, int] = (3, 3, 3)
    global_frames: int = 1

    def __post_init__(self):
        object.__setattr__(self, "tile", _positive_triple("tile", self.tile))
        object.__setattr__(self, "window", _positive_triple("window", self.window))
        g = self.global_frames
        if isinstance(g, bool) or not isinstance(g, int) or g < 0:
            raise ValueError(f"global_frames must be an int >= 0, got {g!r}")

    @classmethod
    def from_numbers(cls, numbers: Sequence[int]) -> "SparsePattern":
        """From the 7 numbers of the CLI's ``--sparse-preview``: TT TH TW (tile) WT WH WW (window) G."""
        if len(numbers) != 7:
            raise ValueError(f"a sparse preview takes 7 numbers (TT TH TW WT WH WW G), got {list(numbers)}")
        return cls(tuple(numbers[:3]), tuple(numbers[3:6]), numbers[6])

    def check_grid(self, grid: Sequence[int]) -> None:
        """``ValueError`` naming the fix where the pattern does not fit the token ``grid`` (T, H, W)."""
        grid = tuple(int(g) for g in grid)
        for axis, n, t in zip("THW", grid, self.tile):
            if n % t:
                fits = [d for d in range(1, n + 1) if n % d == 0]
                raise ValueError(f"SparsePattern tile {self.tile} does not fit the token grid {grid}: {t} does not "
                                 f"divide the {axis} axis ({n} tokens); use a tile whose {axis} size divides {n} "
                                 f"({fits}) at every preview resolution, or another request size")
        if self.global_frames > grid[0]:
            raise ValueError(f"SparsePattern global_frames={self.global_frames} exceeds the grid's {grid[0]} latent "
                             "frames; use global_frames <= the latent frame count (0 for none)")

    def keys_per_query(self, grid: Sequence[int]) -> float:
        """Mean video keys a video query attends to on ``grid`` (the cost model's ``K``), counted per
        temporal tile: a window holds the same number of H and W tokens everywhere (it slides inward)."""
        self.check_grid(grid)
        (T, H, W), (tt, th, tw), (wt, wh, ww), g = grid, self.tile, self.window, self.global_frames
        hw_local = min(wh, H // th) * th * min(ww, W // tw) * tw
        n_t = T // tt
        total = g * H * W * (T * H * W)  # global queries see every key
        for c, start in enumerate(_window_starts(n_t, wt).tolist()):
            lo, hi = start * tt, (start + min(wt, n_t)) * tt  # the window's frames
            local_frames = hi - lo
            overlap = max(0, min(hi, g) - lo)  # window frames that are global anyway
            keys = (local_frames - overlap) * hw_local + g * H * W
            queries = sum(1 for f in range(c * tt, (c + 1) * tt) if f >= g) * H * W
            total += queries * keys
        return total / (T * H * W)


def _window_starts(n_tiles: int, window: int) -> torch.Tensor:
    """First tile of each tile's window along one axis, slid inward at the edges."""
    c = torch.arange(n_tiles)
    return (c - window // 2).clamp(0, max(n_tiles - window, 0))


def _tile_allowed(grid, pattern: SparsePattern) -> torch.Tensor:
    """``(n_tiles, n_tiles)`` bool: query tile -> key tiles of its sliding window (tiles t-major)."""
    axes = []
    for n, t, w in zip(grid, pattern.tile, pattern.window):
        n_tiles = n // t
        start = _window_starts(n_tiles, w)
        k = torch.arange(n_tiles)
        axes.append((k[None, :] >= start[:, None]) & (k[None, :] < start[:, None] + w))
    at, ah, aw = axes
    return (at[:, None, None, :, None, None] & ah[None, :, None, None, :, None]
            & aw[None, None, :, None, None, :]).reshape(at.shape[0] * ah.shape[0] * aw.shape[0], -1)


def _tile_of_token(grid, tile) -> torch.Tensor:
    """``(T*H*W,)`` int64: each video token's tile id (t-major tiles)."""
    (T, H, W), (tt, th, tw) = grid, tile
    t, h, w = torch.arange(T) // tt, torch.arange(H) // th, torch.arange(W) // tw
    return ((t[:, None, None] * (H // th) + h[None, :, None]) * (W // tw) + w[None, None, :]).reshape(-1)


def _groups(grid, pattern: SparsePattern, num_text: int):
    """Token groups and the group-level relation: group = tile (non-global tokens), n_tiles + tile
    (tokens of the global frames), 2 n_tiles (text). Returns (groups (S,), allowed (G, G))."""
    pattern.check_grid(grid)
    tiles = _tile_allowed(grid, pattern)
    n_tiles = tiles.shape[0]
    tile_id = _tile_of_token(grid, pattern.tile)
    frame = torch.arange(grid[0]).repeat_interleave(grid[1] * grid[2])
    glob = frame < pattern.global_frames
    groups = torch.cat([tile_id + n_tiles * glob.long(), torch.full((num_text,), 2 * n_tiles)])
    allowed = torch.ones(2 * n_tiles + 1, 2 * n_tiles + 1, dtype=torch.bool)
    allowed[:n_tiles, :n_tiles] = tiles  # local only between non-global video tokens
    return groups, allowed


@functools.lru_cache(maxsize=32)
def _tables(grid: tuple[int, int, int], pattern: SparsePattern, num_text: int, key_mask: bool, device: torch.device):
    """(groups padded to whole blocks (padding: an extra group that nothing attends), allowed with that
    group's row and column False, then the four block tables)."""
    groups, allowed = _groups(grid, pattern, num_text)
    s, g = groups.numel(), allowed.shape[0]
    padded = torch.full((-(-s // FLEX_BLOCK) * FLEX_BLOCK,), g, dtype=torch.int64)
    padded[:s] = groups
    allowed_pad = torch.zeros(g + 1, g + 1, dtype=torch.bool)
    allowed_pad[:g, :g] = allowed
    text_keys = (groups == g - 1) if key_mask and num_text else None
    return (padded.to(device), allowed_pad.to(device),
            *flex_block_tables(groups, allowed, text_keys, device))


def block_mask(grid: Sequence[int], pattern: SparsePattern, num_text: int = 0,
               text_mask: Optional[torch.Tensor] = None, *, batch: int = 1, device=None):
    """The ``flex_attention`` ``BlockMask`` of ``pattern`` on ``grid`` with ``num_text`` text tokens
    after the video ones (``text_mask (B, num_text)`` bool: valid text keys; ``None``: all valid)."""
    # optional in older torch builds and heavy: imported on first use
    from torch.nn.attention.flex_attention import BlockMask

    grid = tuple(int(g) for g in grid)
    device = torch.device(device if device is not None else (text_mask.device if text_mask is not None else "cpu"))
    groups, allowed, kv_num, kv_idx, full_num, full_idx = _tables(grid, pattern, num_text, text_mask is not None,
                                                                  device)
    s = grid[0] * grid[1] * grid[2] + num_text
    n = s - num_text
    if text_mask is None:
        def mask_mod(bi, hi, qi, ki):
            return allowed[groups[qi], groups[ki]]
    else:
        key_ok = torch.zeros(text_mask.shape[0], groups.numel(), dtype=torch.bool, device=device)
        key_ok[:, :n] = True
        key_ok[:, n:s] = text_mask

        def mask_mod(bi, hi, qi, ki):
            return allowed[groups[qi], groups[ki]] & key_ok[bi, ki]

    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK,
                                    mask_mod=mask_mod, seq_lengths=(s, s))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int], pattern: SparsePattern,
           num_text: int = 0, text_mask: Optional[torch.Tensor] = None, *, compiled: Optional[bool] = None
           ) -> torch.Tensor:
    """Sparse attention of ``(B, S, heads, D)`` q, k, v (``S = T*H*W + num_text``) -> ``(B, S, heads, D)``
    in the input dtype, softmax scale ``D ** -0.5``. ``compiled`` (default: on CUDA): torch.compile's
    fused flex kernel; else flex's eager implementation (refused with ``ValueError`` where it would
    materialise more than ``flex.EAGER_MAX_SCORE_BYTES`` of scores)."""
    return run_flex(q, k, v, block_mask(grid, pattern, num_text, text_mask, device=q.device), compiled)


# The block tables are host-side and cached: opaque to torch.compile, which traces a model through this
# op (one graph per stage resolution: the grid and pattern are constants of the call).
@torch.library.custom_op("surf_accel_sparse::sparse_attention", mutates_args=())
def _sparse_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int], tile: list[int],
               window: list[int], global_frames: int, num_text: int, text_mask: Optional[torch.Tensor]) -> torch.Tensor:
    return attend(q, k, v, grid, SparsePattern(tuple(tile), tuple(window), global_frames), num_text, text_mask)


_sparse_op.register_fake(lambda q, k, v, grid, tile, window, global_frames, num_text, text_mask:
                         torch.empty_like(q, memory_format=torch.contiguous_format))


def _op(q, k, v, grid, pattern: SparsePattern, num_text=0, text_mask=None):
    return _sparse_op(q, k, v, list(grid), list(pattern.tile), list(pattern.window), pattern.global_frames,
                      num_text, text_mask)


__all__ = ["SparsePattern", "attend", "block_mask"]
