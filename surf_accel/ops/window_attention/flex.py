"""``flex`` backend of ``window_attention``: ``torch.nn.attention.flex_attention`` with a block mask
built from the window ids (compiled on CUDA, eager on CPU): torch-native, a second oracle, never
chosen automatically.

``q, k, v``: ``(B, S, heads, D)`` with ``S = T*H*W + num_text``; ``text_mask``: ``(B, num_text)``
bool or None. Returns ``(B, S, heads, D)`` contiguous in the input dtype. The block tables
(``flex_block_tables``) are ``FLEX_BLOCK``-token blocks; the sparse preview attention
(``surf_accel.ops.sparse_attention``) builds its block masks with them too.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from surf_accel.ops import window_reference

FLEX_BLOCK = 128


def flex_block_tables(groups: torch.Tensor, allowed: torch.Tensor, partial_keys: torch.Tensor | None,
                      device: torch.device, block: int = FLEX_BLOCK):
    """The block structure of a token-pair mask that factors through groups: query ``i`` may attend to
    key ``j`` iff ``allowed[groups[i], groups[j]]``. ``groups (S,)`` int64 in ``[0, G)``, ``allowed
    (G, G)`` bool; ``partial_keys (S,)`` bool (or None) marks keys whose validity is decided per batch
    item by the mask_mod (a block holding one is never "full"). Counting allowed token pairs per block
    pair (one-hot occupancy ``O``, ``O A O^T``) lists a block if it holds one and marks it full if it
    holds ``block**2`` (padding holds none, so a partial last block is never full). Returns
    (kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices) shaped (1, 1, nb[, nb])."""
    s = groups.numel()
    nb = -(-s // block)
    occ = torch.zeros(nb, allowed.shape[0], dtype=torch.float64)
    occ.index_put_((torch.arange(s) // block, groups.cpu()), torch.ones(s, dtype=torch.float64), accumulate=True)
    pairs = occ @ allowed.cpu().double() @ occ.T
    full = pairs == block * block
    if partial_keys is not None:
        has_partial = torch.zeros(nb, dtype=torch.bool).index_put_((torch.arange(s) // block,), partial_keys.cpu(),
                                                                   accumulate=True)
        full &= ~has_partial[None, :]
    partial = (pairs > 0) & ~full

    def blocks(m: torch.Tensor):
        order = torch.argsort((~m).to(torch.int8), dim=1, stable=True).to(torch.int32)  # allowed blocks first
        return m.sum(1).to(torch.int32)[None, None].to(device), order[None, None].to(device)

    return (*blocks(partial), *blocks(full))


@functools.lru_cache(maxsize=32)
def _flex_tables(grid: tuple[int, int, int], window: tuple[int, int, int], shift: tuple[int, int, int],
                 num_text: int, key_mask: bool, device: torch.device):
    """Token ids and block structure of the allowed pairs, batch-independent (text keys of a masked
    call stay partial blocks: their validity is per batch item). ``ids (S_pad,)`` int32: window id
    of video tokens, -1 text, -2 padding to whole blocks (flex may evaluate the mask there). Returns
    (ids, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices) shaped (1, 1, nb[, nb])."""
    vid = window_reference.window_ids(grid, window, shift)
    n = vid.numel()
    s = n + num_text
    nb = -(-s // FLEX_BLOCK)
    ids = torch.full((nb * FLEX_BLOCK,), -2, dtype=torch.int64)
    ids[:n] = vid
    ids[n:s] = -1
    n_win = int(vid.max()) + 1
    # groups: one per window, the last one text (sees and is seen by every token)
    allowed = torch.eye(n_win + 1, dtype=torch.bool)
    allowed[n_win, :] = allowed[:, n_win] = True
    groups = torch.where(ids[:s] >= 0, ids[:s], n_win)
    text_keys = (ids[:s] == -1) if key_mask else None
    return (ids.to(torch.int32).to(device), *flex_block_tables(groups, allowed, text_keys, device))


# Eager flex_attention (the CPU path, and what a compiled call falls back to past dynamo's recompile
# limit) materialises the (B, heads, S, S) fp32 scores and a mask as large: refused above 1 GiB of them.
EAGER_MAX_SCORE_BYTES = 1 << 30


@functools.cache
def compiled_flex():
    """torch.compile's fused flex kernel, compiled once with dynamic shapes: one graph serves every
    sequence length (each stage's grid), where ``dynamic=False`` compiled one per shape and, past
    the recompile limit, fell back to eager flex and its full score matrix."""
    # flex_attention is missing from older torch builds (the flex backend's check): imported on first use
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=True)


def eager_reason(batch: int, heads: int, seq: int) -> str | None:
    """Why eager flex_attention refuses ``(batch, seq, heads, D)`` inputs (its score matrix is too large), or None."""
    nbytes = 4 * batch * heads * seq * seq
    if nbytes <= EAGER_MAX_SCORE_BYTES:
        return None
    return (f"eager flex_attention would materialise the full {batch}x{heads}x{seq}x{seq} score matrix "
            f"({nbytes / 2**30:.1f} GiB > {EAGER_MAX_SCORE_BYTES / 2**30:g} GiB); compiled flex (CUDA) or "
            f"another backend serves this size")


def run_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask, compiled: bool | None = None
             ) -> torch.Tensor:
    """``flex_attention`` of ``(B, S, heads, D)`` q, k, v under ``block_mask`` -> contiguous ``(B, S, heads,
    D)``. ``compiled`` (default: on CUDA) runs torch.compile's fused kernel, else flex's eager
    implementation, which raises ``ValueError`` above ``EAGER_MAX_SCORE_BYTES`` of scores."""
    from torch.nn.attention.flex_attention import flex_attention  # optional: see compiled_flex

    if not (q.is_cuda if compiled is None else compiled):
        reason = eager_reason(q.shape[0], q.shape[2], q.shape[1])
        if reason is not None:
            raise ValueError(reason)
        fn = flex_attention
    else:
        fn = compiled_flex()
    out = fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
    return out.transpose(1, 2).contiguous()


def flex_limits(q: torch.Tensor, *args) -> str | None:
    """The dispatch layer's per-call check: eager flex (non-CUDA tensors) within its memory bound."""
    return None if q.is_cuda else eager_reason(q.shape[0], q.shape[2], q.shape[1])


def flex_window_attention(q, k, v, grid, window, shift, num_text=0, text_mask=None, *, compiled: bool | None = None):
    """``flex_attention`` over ``(B, S, heads, D)`` with the window block mask; ``compiled`` as ``run_flex``."""
    from torch.nn.attention.flex_attention import BlockMask  # optional: see compiled_flex

    b, s, _, _ = q.shape
    n = s - num_text
    ids, kv_num, kv_idx, full_num, full_idx = _flex_tables(tuple(grid), tuple(window), tuple(shift), num_text,
                                                           text_mask is not None, q.device)

    def allowed(qi, ki):
        qid, kid = ids[qi], ids[ki]
        return (qid == kid) | (qid == -1) | (kid == -1)

    if text_mask is None:
        def mask_mod(bi, hi, qi, ki):
            return allowed(qi, ki)
    else:
        key_ok = torch.zeros(b, ids.numel(), dtype=torch.bool, device=q.device)
        key_ok[:, :n] = True
        key_ok[:, n:s] = text_mask

        def mask_mod(bi, hi, qi, ki):
            return allowed(qi, ki) & key_ok[bi, ki]

    bm = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                  seq_lengths=(s, s))
    return run_flex(q, k, v, bm, compiled)


# Host-side tables: an opaque custom op so torch.compile traces a model through it.
@torch.library.custom_op("surf_accel_window::flex_window_attention", mutates_args=())
def _flex_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: list[int],
                           window: list[int], shift: list[int], num_text: int,
                           text_mask: Optional[torch.Tensor], text_lengths: Optional[list[int]]) -> torch.Tensor:
    return flex_window_attention(q, k, v, grid, window, shift, num_text, text_mask)
