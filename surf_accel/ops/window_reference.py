"""Pure-PyTorch shifted-window attention (docs/design.md 3.2): the explicit-mask oracle and the partitioned
``torch`` backend.

Video tokens sit on a grid ``(T, H, W)`` flattened t-major (token ``n = (t * H + h) * W + w``), then
come ``num_text`` text tokens. Along an axis of length ``L`` with window ``w`` and shift ``s`` a
token's window index is ``(i + s) // w``; a window ``>= L`` covers the whole axis (its shift is then
irrelevant and taken as 0). Window ``a`` of an axis spans ``[max(0, a*w - s), min(L, (a+1)*w - s))``.

* a video query attends to the video keys of its window (same index on all three axes) and to every
  valid text key;
* a text query attends to every video key and every valid text key;
* padded text keys (``text_mask`` False) are never attended (padded text *queries* still get an
  output, computed like any text query).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

Triple = tuple[int, int, int]


def axis_params(length: int, window: int, shift: int) -> tuple[int, int, int]:
    """Effective ``(window, shift, number of windows)`` of one axis."""
    if window >= length:
        return length, 0, 1
    return window, shift, (length - 1 + shift) // window + 1


def effective(grid: Sequence[int], window: Sequence[int], shift: Sequence[int]) -> tuple[Triple, Triple, Triple]:
    """Per-axis effective windows, shifts and window counts."""
    params = [axis_params(int(g), int(w), int(s)) for g, w, s in zip(grid, window, shift)]
    return tuple(p[0] for p in params), tuple(p[1] for p in params), tuple(p[2] for p in params)


def axis_segments(length: int, window: int, shift: int) -> list[tuple[int, int]]:
    """``[start, end)`` of every window along one axis (edge windows are partial)."""
    w, s, n = axis_params(length, window, shift)
    return [(max(0, a * w - s), min(length, (a + 1) * w - s)) for a in range(n)]


def window_ids(grid: Sequence[int], window: Sequence[int], shift: Sequence[int],
               device: torch.device | str | None = None) -> torch.Tensor:
    """``(T*H*W,)`` int64: the linear window id ``(a * nH + b) * nW + c`` of every video token."""
    (wt, wh, ww), (st, sh, sw), (_, nh, nw) = effective(grid, window, shift)
    T, H, W = (int(g) for g in grid)
    t = (torch.arange(T, device=device) + st) // wt
    h = (torch.arange(H, device=device) + sh) // wh
    w = (torch.arange(W, device=device) + sw) // ww
    return ((t[:, None, None] * nh + h[None, :, None]) * nw + w[None, None, :]).reshape(-1)


def window_mask(grid: Sequence[int], window: Sequence[int], shift: Sequence[int] = (0, 0, 0),
                num_text: int = 0, text_mask: torch.Tensor | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The allowed-pairs mask: bool ``(S, S)`` (``[query, key]``), or ``(B, S, S)`` with ``text_mask``.

    ``S = T*H*W + num_text``. Built explicitly (``O(S^2)`` memory): the oracle, not a fast path.
    """
    if text_mask is not None:
        device = text_mask.device
    ids = window_ids(grid, window, shift, device)
    n = ids.numel()
    s = n + num_text
    mask = torch.ones(s, s, dtype=torch.bool, device=device)
    mask[:n, :n] = ids[:, None] == ids[None, :]
    if text_mask is None:
        return mask
    key_ok = torch.cat([torch.ones(text_mask.shape[0], n, dtype=torch.bool, device=device), text_mask.bool()], 1)
    return mask[None] & key_ok[:, None, :]


def window_attention_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int],
                            window: Sequence[int], shift: Sequence[int] = (0, 0, 0), num_text: int = 0,
                            text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Explicit-mask attention, ``(B, S, heads, D)`` in and out. Math in float64 when the inputs are
    float64 (the test oracle), else float32; the result has the input dtype."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    mask = window_mask(grid, window, shift, num_text, text_mask, q.device)
    if mask.dim() == 2:
        mask = mask[None]
    qf, kf, vf = (x.to(compute).transpose(1, 2) for x in (q, k, v))  # (B, heads, S, D)
    scores = (qf @ kf.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    probs = scores.softmax(-1)
    # 0 * (poisoned value) must stay 0: zero the masked values' contributions explicitly.
    out = probs @ vf.masked_fill(~_key_ok(mask)[:, None, :, None], 0.0) if text_mask is not None else probs @ vf
    return out.transpose(1, 2).to(q.dtype)


def _key_ok(mask: torch.Tensor) -> torch.Tensor:
    """Keys attended by at least one query, ``(B, S)``."""
    return mask.any(dim=1)


@functools.lru_cache(maxsize=64)
def _padded_table(grid: Triple, window: Triple, shift: Triple, device: torch.device):
    """Windows as a padded table: ``table (nWin, Lmax)`` token indices (padding -> 0), ``valid
    (nWin, Lmax)`` and ``inverse (N,)`` (each token's position in the flattened table)."""
    ids = window_ids(grid, window, shift)
    n_win = int(ids.max()) + 1
    perm = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=n_win)
    starts = torch.cumsum(counts, 0) - counts
    sorted_ids = ids[perm]
    pos = torch.arange(ids.numel()) - starts[sorted_ids]
    lmax = int(counts.max())
    table = torch.zeros(n_win, lmax, dtype=torch.long)
    valid = torch.zeros(n_win, lmax, dtype=torch.bool)
    table[sorted_ids, pos] = perm
    valid[sorted_ids, pos] = True
    inverse = torch.empty_like(ids)
    inverse[perm] = sorted_ids * lmax + pos
    return table.to(device), valid.to(device), inverse.to(device)


def window_attention_partitioned(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Sequence[int],
                                 window: Sequence[int], shift: Sequence[int] = (0, 0, 0), num_text: int = 0,
                                 text_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The ``torch`` backend: gather windows into a padded ``(B * nWin, Lmax [+ text])`` batch, one SDPA
    with a key-padding mask, gather back. Memory ``O(S * (window + text))``, not ``O(S^2)``."""
    b, s, heads, d = q.shape
    grid3, win3, shift3 = tuple(map(int, grid)), tuple(map(int, window)), tuple(map(int, shift))
    table, valid, inverse = _padded_table(grid3, win3, shift3, q.device)
    n = s - num_text
    n_win, lmax = table.shape

    def windows(x: torch.Tensor) -> torch.Tensor:  # (B, N.., H, D) -> (B, nWin, Lmax, H, D)
        return x[:, :n][:, table]

    qw, kw, vw = windows(q), windows(k), windows(v)
    key_ok = valid[None].expand(b, n_win, lmax)
    if num_text:
        tm = (torch.ones(b, num_text, dtype=torch.bool, device=q.device) if text_mask is None
              else text_mask.to(device=q.device, dtype=torch.bool))
        # Zero padded text keys/values: a poisoned (huge) padded key could overflow q.k to inf, and
        # SDPA's additive -inf mask would turn that into NaN.
        k_text = k[:, n:].masked_fill(~tm[:, :, None, None], 0)
        v_text = v[:, n:].masked_fill(~tm[:, :, None, None], 0)
        kt = k_text[:, :, None].expand(b, num_text, n_win, heads, d).transpose(1, 2)
        vt = v_text[:, :, None].expand(b, num_text, n_win, heads, d).transpose(1, 2)
        kw, vw = torch.cat([kw, kt], 2), torch.cat([vw, vt], 2)
        key_ok = torch.cat([key_ok, tm[:, None].expand(b, n_win, num_text)], 2)
    else:
        tm = None

    def heads_first(x: torch.Tensor) -> torch.Tensor:  # (B, nWin, L, H, D) -> (B*nWin, H, L, D)
        return x.flatten(0, 1).transpose(1, 2)

    mask = key_ok.reshape(b * n_win, 1, 1, -1)
    out_w = F.scaled_dot_product_attention(heads_first(qw), heads_first(kw), heads_first(vw), attn_mask=mask)
    out_w = out_w.transpose(1, 2).reshape(b, n_win * lmax, heads, d)
    out_video = out_w[:, inverse]
    if not num_text:
        return out_video
    # Text queries: every video key and every valid text key.
    full_ok = torch.cat([torch.ones(b, n, dtype=torch.bool, device=q.device), tm], 1)[:, None, None, :]
    k_all, v_all = torch.cat([k[:, :n], k_text], 1), torch.cat([v[:, :n], v_text], 1)
    out_text = F.scaled_dot_product_attention(q[:, n:].transpose(1, 2), k_all.transpose(1, 2),
                                              v_all.transpose(1, 2), attn_mask=full_ok).transpose(1, 2)
    return torch.cat([out_video, out_text], 1)
