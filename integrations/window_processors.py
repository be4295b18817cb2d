"""Shifted-window attention processors for diffusers video transformers (docs/design.md 3.2, 4).

``apply_window_attention(transformer, window)`` swaps the attention modules its family's
``AttentionSpec`` names (``surf_accel.family``) -- the self-attention of a ``WanTransformer3DModel``
(each block's ``attn1``), the joint video+text attention of a ``HunyuanVideoTransformer3DModel``
(dual- and single-stream blocks) or a ``HunyuanVideo15Transformer3DModel`` (its dual-stream blocks) --
for ONE shared processor instance that calls :func:`surf_accel.ops.window_attention`. Blocks alternate shift 0 and
``window // 2`` (block 0 unshifted); the per-block choice is a plain bool attribute on each attention
module, so torch.compile sees at most two variants of a block and never recompiles per block.
Cross-attention, the token refiner and everything else keep their processors and the diffusers
attention backend the user set.

The token grid ``(T / p_t, H / p_h, W / p_w)`` is read from the transformer's input by a diffusers
model hook (``GridHook`` in the transformer's ``HookRegistry``, beside the caches and group offload).
Windows are in tokens (after patchify). ``remove_window_attention`` puts the original processor
objects back and removes the hook; ``windowed_attention`` is the context-manager form.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.attention_dispatch import _templated_context_parallel_attention
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_wan import _get_qkv_projections

from surf_accel.family import AttentionSpec, attention_spec
from surf_accel.ops.window_attention import window_attention
from surf_accel.ops.window_reference import window_attention_partitioned

STATE_ATTR = "_surf_window_attention"
SHIFT_ATTR = "_surf_window_shifted"


@dataclass
class WindowState:
    """Shared by the processor, the grid hook and ``remove_window_attention`` of one model."""

    window: tuple[int, int, int]
    backend: str | None
    grid: tuple[int, int, int] | None = None
    originals: dict = field(default_factory=dict)  # attention module -> its original processor
    processor: object = None
    # Valid text tokens per batch item as host ints, and the encoder_attention_mask they came from:
    # counted once per new mask (a pipeline passes one mask object for all its steps), never per layer.
    text_source: object = None
    text_lengths: tuple[int, ...] | None = None

    def shift(self, shifted: bool) -> tuple[int, int, int]:
        return tuple(w // 2 for w in self.window) if shifted else (0, 0, 0)

    def current_grid(self) -> tuple[int, int, int]:
        if self.grid is None:
            raise RuntimeError("window attention needs the token grid, which is read when the transformer's "
                               "forward runs; call the transformer, not its attention modules directly")
        return self.grid


def _ulysses(parallel_config, attend, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``attend(q, k, v)`` over the whole token sequence. Under Ulysses context parallelism each rank
    holds a shard of the tokens with every head: diffusers' own all-to-all (the path its dense
    attention takes) hands ``attend`` the whole sequence, in token order, for the rank's share of the
    heads, and shards the output back. ``install_processors`` refuses ring attention."""
    if parallel_config is None or parallel_config.context_parallel_config is None:
        return attend(query, key, value)

    def forward_op(ctx, q, k, v, *args, **kwargs):
        return attend(q, k, v)

    return _templated_context_parallel_attention(query, key, value, forward_op=forward_op, backward_op=None,
                                                 _parallel_config=parallel_config)


def _rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE: channel pairs (2i, 2i+1) rotated by the pair's angle; ``cos``/``sin`` hold the
    angle's cosine/sine repeated per pair, broadcast over (B, S, heads, D)."""
    pairs = x.unflatten(-1, (-1, 2)).float()
    even, odd = pairs[..., 0], pairs[..., 1]
    c, s = cos[..., 0::2].float(), sin[..., 0::2].float()
    return torch.stack((even * c - odd * s, even * s + odd * c), dim=-1).flatten(-2).type_as(x)


class WanWindowAttnProcessor:
    """Self-attention (``attn1``) of Wan blocks with shifted windows. One instance per model."""

    _attention_backend = None  # diffusers' set_attention_backend writes it; windows ignore it
    _parallel_config = None  # diffusers' ParallelConfig: the attention runs through Ulysses' all-to-all
    supports_ulysses = True

    def __init__(self, state: WindowState):
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise RuntimeError("WanWindowAttnProcessor serves self-attention without a mask (attn1) only")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query = _rotate_interleaved(query, *rotary_emb)
            key = _rotate_interleaved(key, *rotary_emb)
        state = self.state
        grid, window, shift = state.current_grid(), state.window, state.shift(getattr(attn, SHIFT_ATTR, False))
        out = _ulysses(self._parallel_config, lambda q, k, v: self.attend(q, k, v, grid, window, shift),
                       query, key, value)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))

    def attend(self, query, key, value, grid, window, shift) -> torch.Tensor:
        """Windowed attention of ``(B, S, heads, D)`` q, k, v on the t-major ``grid`` -> ``(B, S, heads, D)``."""
        return window_attention(query, key, value, grid, window, shift, backend=self.state.backend)


class HunyuanVideoWindowAttnProcessor:
    """Joint video+text attention of HunyuanVideo's dual- and single-stream blocks (and of
    HunyuanVideo-1.5's dual-stream blocks, the same projections) with shifted windows on the video
    queries; text tokens attend to everything valid. One instance per model.

    The text mask comes as HunyuanVideo's ``(B, 1, 1, N + num_text)`` key mask or HunyuanVideo-1.5's
    ``(B, num_text)`` mask (which diffusers turns into a query-and-key mask: its padded text queries
    attend to nothing, here to the valid keys; padded text is never a key either way, so the video
    output is the same)."""

    _attention_backend = None
    _parallel_config = None
    # under Ulysses each rank would append the whole text to its video shard, and the all-to-all would
    # interleave the copies; diffusers has no context-parallel plan for these models either
    supports_ulysses = False

    def __init__(self, state: WindowState):
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None):
        n_video = hidden_states.shape[1]
        num_text = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        dual = attn.add_q_proj is not None
        x = hidden_states if dual or encoder_hidden_states is None else torch.cat([hidden_states, encoder_hidden_states], 1)
        query, key, value = (proj(x).unflatten(2, (attn.heads, -1)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query = torch.cat([apply_rotary_emb(query[:, :n_video], image_rotary_emb, sequence_dim=1),
                               query[:, n_video:]], 1)
            key = torch.cat([apply_rotary_emb(key[:, :n_video], image_rotary_emb, sequence_dim=1),
                             key[:, n_video:]], 1)
        if dual and encoder_hidden_states is not None:
            eq, ek, ev = (proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
                          for proj in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = torch.cat([query, eq], 1), torch.cat([key, ek], 1), torch.cat([value, ev], 1)

        text_mask = None
        if attention_mask is not None and num_text:
            if attention_mask.dtype != torch.bool:
                raise RuntimeError(f"expected HunyuanVideo's boolean key mask, got dtype {attention_mask.dtype}")
            # the text part of a (B, 1, 1, N + num_text) key mask (video keys always valid) or a (B, num_text) mask
            text_mask = attention_mask.reshape(attention_mask.shape[0], -1)[:, -num_text:].contiguous()
        state = self.state
        lengths = state.text_lengths if text_mask is not None else None
        out = self.attend(query, key, value, state.current_grid(), state.window,
                          state.shift(getattr(attn, SHIFT_ATTR, False)), num_text, text_mask, lengths)
        out = out.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return out
        out, text_out = out[:, :n_video], out[:, n_video:]
        if getattr(attn, "to_out", None) is not None:
            out = attn.to_out[1](attn.to_out[0](out))
        if getattr(attn, "to_add_out", None) is not None:
            text_out = attn.to_add_out(text_out)
        return out, text_out

    def attend(self, query, key, value, grid, window, shift, num_text, text_mask, text_lengths) -> torch.Tensor:
        """Joint attention of ``(B, S, heads, D)`` q, k, v (video t-major on ``grid``, then ``num_text``
        text tokens, valid where ``text_mask``) -> ``(B, S, heads, D)``."""
        return window_attention(query, key, value, grid, window, shift, num_text=num_text, text_mask=text_mask,
                                text_lengths=text_lengths, backend=self.state.backend)


def _check_window(window) -> tuple[int, int, int]:
    if isinstance(window, torch.Tensor) or not isinstance(window, Sequence) or len(window) != 3 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in window):
        raise ValueError(f"window must be three positive ints (T, H, W) in tokens, got {window!r}")
    return tuple(int(w) for w in window)


def mask_text_sources(kwargs) -> tuple:
    """The forward input the valid text count depends on: ``encoder_attention_mask`` (a pipeline passes
    the same object every step)."""
    return (kwargs.get("encoder_attention_mask"),)


def mask_text_lengths(sources: tuple) -> tuple[int, ...] | None:
    """Valid text tokens per batch item: the attention's text mask is a prefix of this many ones."""
    mask = sources[0]
    if mask is None:
        return None
    n = (mask != 0).sum(1)  # counted as integers: a bfloat16 sum is inexact above 256
    return tuple(int(x) for x in n.tolist())


class GridHook(ModelHook):
    """A diffusers model hook on the transformer: before each call, the token grid of its
    ``hidden_states`` ``(B, C, T, H, W)`` and its text mask's valid lengths into ``state``."""

    def __init__(self, state: WindowState, spec: AttentionSpec, patch: tuple[int, int, int]):
        super().__init__()
        self.state, self.spec, self.patch = state, spec, patch

    def pre_forward(self, module, *args, **kwargs):
        x = kwargs.get("hidden_states", args[0] if args else None)
        if x is None or x.dim() != 5:
            raise RuntimeError("window attention expects the transformer's hidden_states (B, C, T, H, W)")
        _, _, t, h, w = x.shape
        state, patch = self.state, self.patch
        state.grid = (t // patch[0], h // patch[1], w // patch[2])
        sources = self.spec.text_sources(kwargs)
        old = state.text_source
        if old is None or len(old) != len(sources) or any(a is not b for a, b in zip(old, sources)):
            state.text_source = sources
            state.text_lengths = self.spec.text_lengths(sources)
        return args, kwargs


def apply_window_attention(transformer, window: tuple[int, int, int], *, backend: str | None = None) -> None:
    """Give ``transformer``'s video self-attention shifted windows of ``window`` tokens (T, H, W);
    blocks alternate shift 0 and ``window // 2``. Applying again only changes window and backend."""
    spec = attention_spec(transformer)
    window = _check_window(window)
    state = getattr(transformer, STATE_ATTR, None)
    if state is not None:
        state.window, state.backend = window, backend
        return
    install_processors(transformer, spec, WindowState(window, backend), spec.processor, STATE_ATTR,
                       shifted_blocks=True)


def install_processors(transformer, spec: AttentionSpec, state: WindowState, proc_cls, state_attr: str, *,
                       shifted_blocks: bool) -> None:
    """One shared ``proc_cls(state)`` on every target attention module of ``transformer`` (the
    originals kept in ``state``), the grid hook (named ``state_attr`` in its ``HookRegistry``), and ``state`` at ``transformer.<state_attr>``;
    ``shifted_blocks`` marks odd blocks shifted. Under diffusers' Ulysses context parallelism the
    processor attends through its all-to-all (``_ulysses``); ring attention is refused."""
    parallel = _check_context_parallel(transformer, spec, proc_cls)
    state.processor = proc_cls(state)
    state.processor._parallel_config = parallel
    for i, attn in enumerate(spec.targets(transformer)):
        state.originals[attn] = attn.processor
        if shifted_blocks:
            setattr(attn, SHIFT_ATTR, i % 2 == 1)
        attn.set_processor(state.processor)
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(
        GridHook(state, spec, spec.patch_sizes(transformer)), state_attr)
    setattr(transformer, state_attr, state)


def _check_context_parallel(transformer, spec: AttentionSpec, proc_cls):
    """The transformer's ``ParallelConfig`` if it is context-parallel (else ``None``), after refusing what
    the window processors cannot run there: ring attention (each rank sees a shard of the keys, and a
    window's keys are spread over the ranks), joint video+text attention, and a Ulysses degree the
    heads do not divide."""
    parallel = getattr(getattr(transformer, "_orig_mod", transformer), "_parallel_config", None)
    cp = getattr(parallel, "context_parallel_config", None)
    if cp is None:
        return None
    what = "shifted-window and sparse attention"
    if cp.ring_degree > 1:
        raise NotImplementedError(
            f"{what} run under Ulysses context parallelism only, where each rank attends over the whole token "
            f"grid for its share of the heads; ring attention (ring_degree={cp.ring_degree}) gives each rank a "
            "shard of the keys. Use ContextParallelConfig(ulysses_degree=N), or SurfConfig(window=None, "
            "preview_attention=None) with ring attention")
    if not proc_cls.supports_ulysses:
        raise NotImplementedError(
            f"{what} on {type(transformer).__name__} (joint video and text attention) do not run under context "
            "parallelism; use SurfConfig(window=None, preview_attention=None)")
    heads = {attn.heads for attn in spec.targets(transformer)}
    if not cp.ulysses_anything and any(h % cp.ulysses_degree for h in heads):
        raise ValueError(f"{what} under Ulysses degree {cp.ulysses_degree} need it to divide the attention heads "
                         f"({sorted(heads)}): each rank attends with an equal share of them")
    return parallel


def restore_processors(transformer, state_attr: str) -> None:
    """Undo ``install_processors``: the original processor objects back, the hook dropped (no-op if absent)."""
    state = getattr(transformer, state_attr, None)
    if state is None:
        return
    for attn, original in state.originals.items():
        attn.set_processor(original)
        if hasattr(attn, SHIFT_ATTR):
            delattr(attn, SHIFT_ATTR)
    HookRegistry.check_if_exists_or_initialize(transformer).remove_hook(state_attr, recurse=False)
    delattr(transformer, state_attr)


def remove_window_attention(transformer) -> None:
    """Put back the original processor objects and drop the grid hook (no-op if not applied)."""
    attention_spec(transformer)
    restore_processors(transformer, STATE_ATTR)


@contextlib.contextmanager
def windowed_attention(transformer, window: tuple[int, int, int], *, backend: str | None = None) -> Iterator[None]:
    """``with windowed_attention(transformer, (wt, wh, ww)):`` windows inside, the previous state after."""
    previous = getattr(transformer, STATE_ATTR, None)
    before = None if previous is None else (previous.window, previous.backend)
    apply_window_attention(transformer, window, backend=backend)
    try:
        yield
    finally:
        if before is None:
            remove_window_attention(transformer)
        else:
            apply_window_attention(transformer, before[0], backend=before[1])


class TrainableWanWindowAttnProcessor(WanWindowAttnProcessor):
    """``WanWindowAttnProcessor`` with a differentiable attention call (same windows, same shifts): the
    window ops are custom ops without an autograd formula, so training calls the ``torch`` backend's own
    function (``window_reference.window_attention_partitioned``: gather windows, SDPA, gather back)."""

    def attend(self, query, key, value, grid, window, shift) -> torch.Tensor:
        return window_attention_partitioned(query, key, value, grid, window, shift)


@contextlib.contextmanager
def training_windows(transformer, window: Optional[tuple[int, int, int]]) -> Iterator[None]:
    """Within the context ``transformer`` (a ``WanTransformer3DModel``, not a DDP wrapper) attends in
    shifted windows of ``window`` tokens, differentiably, with the state of ``windowed_attention``
    (shifts, grid hook, originals restored on exit); ``None``: dense attention, nothing changes."""
    if window is None:
        yield
        return
    if getattr(getattr(transformer, "_parallel_config", None), "context_parallel_config", None) is not None:
        # the training processor's autograd runs outside diffusers' all-to-all, which has no backward here
        raise NotImplementedError("training with window attention does not run under context parallelism")
    with windowed_attention(transformer, tuple(window)):
        state = getattr(transformer, STATE_ATTR)
        proc = TrainableWanWindowAttnProcessor(state)
        for attn in state.originals:
            attn.set_processor(proc)
        yield


__all__ = ["HunyuanVideoWindowAttnProcessor", "TrainableWanWindowAttnProcessor", "WanWindowAttnProcessor",
           "apply_window_attention", "remove_window_attention", "training_windows", "windowed_attention"]
