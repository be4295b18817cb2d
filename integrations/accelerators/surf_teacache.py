"""TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model") as
a reversible diffusers ``ModelHook``, usable with or without SURF.

The rule, per CFG branch: an *indicator* tensor is read at every transformer call; its relative L1
change to the previous call's, ``x = mean|I_t - I_prev| / mean|I_prev|``, is rescaled by a per-model
polynomial ``p`` and accumulated, ``acc += p(x)``. While ``acc < threshold`` the call skips the
transformer blocks and adds the residual ``blocks(h) - h`` of the last computed call to its input;
otherwise it computes and ``acc = 0``. Forced computes (``acc = 0``): the first ``retention_steps``
of a stage and its last step (SURF's switch and handoff read the last step's prediction), and the
first call after a reset. Under SURF the state is reset at every stage (every resolution change),
and the step index and count come from ``cache_context`` per stage (``stages.StepInfo``); outside
SURF they come from the pipeline's ``cache_context`` (``WanPipeline`` passes them) or, where a
pipeline passes none (``HunyuanVideoPipeline``), from a per-branch call counter and
``SurfTeaCacheConfig.num_inference_steps``.

Published facts used here (ali-vilab/TeaCache at commit 7c10efc): the rescale polynomials
(highest power first, as ``numpy.poly1d`` takes them) and retention of TeaCache4Wan2.1/
``teacache_generate.py`` and TeaCache4HunyuanVideo/``teacache_sample_video.py``, the thresholds of
their READMEs. TeaCache4Wan2.1 has two indicators per checkpoint: the time embedding (``use_ret_steps``
False: retain the first step, always compute the last) and the timestep projection that modulates
every block (``use_ret_steps`` True: retain the first 5 steps); its README recommends the latter except
for T2V 1.3B, which is each checkpoint's default here. HunyuanVideo's indicator is the first double
block's modulated image input, ``norm1(h, temb)`` of ``transformer_blocks[0]`` (retain the first step,
compute the last). The indicator's relative change is computed in float32.

Layout: the hooks sit on the blocks of the transformer's first block list (``blocks`` for Wan,
``transformer_blocks`` then ``single_transformer_blocks`` for HunyuanVideo); the residual is over the
video tokens ``(B, L, D)`` only (the text stream is passed through on a skip: neither model reads it
after the blocks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager

from surf_accel.context_parallel import cp_config, relative_l1
from surf_accel.family import families
from surf_accel.stages import Accelerator, AcceleratorKind, StageInfo, cache_threshold, current_step, detect

_HEAD = "surf_teacache_head"
_BLOCK = "surf_teacache_block"
_TEMB = "surf_teacache_temb"
_BLOCK_LISTS = ("blocks", "transformer_blocks", "single_transformer_blocks")


@dataclass(frozen=True)
class TeaCacheModel:
    """A checkpoint TeaCache published coefficients for, and how to recognise its transformer."""

    transformer: str  # diffusers class name
    in_channels: int
    size: tuple[int, int]  # (num_layers, heads x head_dim) of the checkpoint
    coefficients: dict  # indicator -> polynomial (highest power first)
    default_indicator: str
    thresholds: tuple[float, ...]  # published thresholds (latency tables of the READMEs)


# indicator -> steps retained at the start of each stage
RETENTION = {"temb": 1, "timestep_proj": 5, "modulated_input": 1}


def teacache_models() -> dict[str, TeaCacheModel]:
    """Checkpoint name -> its published coefficients, over every registered family (``Family.teacache``)."""
    return {k: m for fam in families() for k, m in fam.teacache.items()}


def teacache_indicators() -> dict[str, tuple[str, ...]]:
    """Transformer class name -> the indicators TeaCache reads there (``Family.teacache_indicators``)."""
    return {cls: ind for fam in families() for cls, ind in fam.teacache_indicators.items()}


def _size(transformer) -> tuple[int, int]:
    c = transformer.config
    return int(c.num_layers), int(c.num_attention_heads) * int(c.attention_head_dim)


@dataclass
class SurfTeaCacheConfig:
    """``threshold``: accumulated rescaled change below which a call skips (``teacache_models()[m].thresholds``
    are the published ones). ``model``: a key of ``teacache_models()`` (``None``: recognised from the
    transformer's config); ``coefficients`` (with ``indicator``) replaces the published polynomial, e.g.
    one fitted for another checkpoint. ``retention_steps``: steps computed at the start of every
    stage (``None``: the indicator's published retention). ``num_inference_steps``: the call's step
    count for pipelines that pass none to ``cache_context`` (HunyuanVideoPipeline without SURF)."""

    threshold: float = 0.2
    model: Optional[str] = None
    indicator: Optional[str] = None
    coefficients: Optional[Sequence[float]] = None
    retention_steps: Optional[int] = None
    num_inference_steps: Optional[int] = None

    def __post_init__(self):
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise ValueError(f"SurfTeaCacheConfig.threshold must be a finite number, got {self.threshold!r}")
        models = teacache_models()
        if self.model is not None and self.model not in models:
            raise ValueError(f"unknown TeaCache model {self.model!r}; published coefficients exist for "
                             f"{', '.join(models)} (or pass coefficients=... with indicator=...)")
        if self.coefficients is not None:
            if self.indicator is None:
                raise ValueError("SurfTeaCacheConfig(coefficients=...) needs the indicator they were fitted on: "
                                 f"indicator= one of {sorted({i for v in teacache_indicators().values() for i in v})}")
            if len(self.coefficients) == 0 or not all(math.isfinite(float(c)) for c in self.coefficients):
                raise ValueError(f"SurfTeaCacheConfig.coefficients must be finite numbers, got {self.coefficients!r}")
        for name in ("retention_steps", "num_inference_steps"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v >= (0 if name == "retention_steps" else 1)):
                raise ValueError(f"SurfTeaCacheConfig.{name} must be an int >= "
                                 f"{0 if name == 'retention_steps' else 1}, got {v!r}")

    def resolve(self, transformer) -> tuple[str, tuple[float, ...], int]:
        """(indicator, polynomial, retention) for ``transformer``; ``ValueError`` for a mismatch."""
        cls = type(transformer).__name__
        models, indicators = teacache_models(), teacache_indicators()
        if cls not in indicators:
            raise ValueError(f"TeaCache supports {', '.join(indicators)}; got {cls}")
        key = self.model
        if key is None and self.coefficients is None:
            key = next((k for k, m in models.items() if m.transformer == cls and m.size == _size(transformer)
                        and m.in_channels == transformer.config.in_channels), None)
            if key is None:
                raise ValueError(f"no published TeaCache coefficients match this {cls} (layers x width "
                                 f"{_size(transformer)}, in_channels {transformer.config.in_channels}); pass "
                                 f"SurfTeaCacheConfig(model=...) (one of {', '.join(models)}) or coefficients=... with "
                                 "indicator=...")
        if key is not None:
            m = models[key]
            if m.transformer != cls:
                raise ValueError(f"TeaCache coefficients {key!r} are for a {m.transformer}, not this {cls}; use "
                                 f"one of {', '.join(k for k, v in models.items() if v.transformer == cls)}")
            channels = {v.in_channels for v in models.values() if v.transformer == cls}
            if transformer.config.in_channels in channels and m.in_channels != transformer.config.in_channels:
                raise ValueError(f"TeaCache coefficients {key!r} are for a {m.in_channels}-channel "
                                 f"({'image' if m.in_channels == 36 else 'text'}-to-video) {cls}; this one reads "
                                 f"{transformer.config.in_channels} channels")
            known = {v.size for v in models.values() if v.transformer == cls}
            if _size(transformer) in known and _size(transformer) != m.size:
                fits = [k for k, v in models.items() if v.transformer == cls and v.size == _size(transformer)
                        and v.in_channels == transformer.config.in_channels]
                raise ValueError(f"TeaCache coefficients {key!r} were fitted on a {m.size[0]}-layer, {m.size[1]}-wide "
                                 f"model; this {cls} is {_size(transformer)[0]} x {_size(transformer)[1]}: use "
                                 f"{' or '.join(repr(k) for k in fits)}")
        indicator = self.indicator or models[key].default_indicator
        if indicator not in indicators[cls]:
            raise ValueError(f"TeaCache indicator {indicator!r} does not exist for {cls}; use one of {indicators[cls]}")
        if self.coefficients is not None:
            poly = tuple(float(c) for c in self.coefficients)
        else:
            if indicator not in models[key].coefficients:
                raise ValueError(f"TeaCache published no {indicator!r} coefficients for {key!r}")
            poly = models[key].coefficients[indicator]
        retention = RETENTION[indicator] if self.retention_steps is None else self.retention_steps
        return indicator, poly, retention


class _BranchState:
    """One CFG branch's TeaCache state (keyed by the ``cache_context`` name)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.calls = 0  # own step counter, for pipelines that pass no step index
        self.previous: Optional[torch.Tensor] = None
        self.accumulated = 0.0
        self.residual: Optional[torch.Tensor] = None
        self.head_input: Optional[torch.Tensor] = None
        self.skip = False
        self.temb: Optional[torch.Tensor] = None  # Wan's time embedding of the current call


def _arg(args, kwargs, index: int, name: str):
    return kwargs[name] if name in kwargs else args[index]


class _TeaCacheShared:
    """What the hooks of one transformer share: config, per-branch states, per-stage statistics."""

    def __init__(self, transformer, config: SurfTeaCacheConfig):
        self.transformer = transformer
        self.config = config
        self.indicator, self.poly, self.retention = config.resolve(transformer)
        self.states = StateManager(_BranchState)
        self.stats: dict[str, dict[str, list[bool]]] = {}  # stage -> branch -> computed? per call
        self.stage = "call"

    def branch(self) -> str:
        ctx = self.states._context
        if ctx is None:
            raise RuntimeError("TeaCache needs each transformer call inside `transformer.cache_context(name)` (one "
                               "state per CFG branch); diffusers' Wan and HunyuanVideo pipelines and SURF's adapters "
                               "enter it")
        return ctx.name

    def step(self, state: _BranchState) -> tuple[int, int]:
        """(index, count) of the current step within the stage (or the call)."""
        ctx = self.states.context
        if ctx.step_index is not None and ctx.num_inference_steps is not None:
            return int(ctx.step_index), int(ctx.num_inference_steps)
        n = self.config.num_inference_steps
        if n is None:
            raise ValueError("this pipeline passes no step index to `cache_context`; set "
                             "SurfTeaCacheConfig(num_inference_steps=N) to the call's num_inference_steps so TeaCache "
                             "knows the last step (or run it under surf_accel.patch, which passes them per stage)")
        i = state.calls % n
        return i, n

    # Eager under torch.compile: the rule's running sums and per-call records would otherwise be guarded
    # on as constants and recompile the block every step; the compiled code sees only the decision.
    @torch.compiler.disable
    def decide(self, indicator: torch.Tensor) -> bool:
        """TeaCache's rule for the current call of the current branch; True: compute the blocks."""
        state: _BranchState = self.states.get_state()
        i, n = self.step(state)
        state.calls += 1
        ind = indicator.detach().float()
        if state.previous is not None and state.previous.shape != ind.shape:
            raise RuntimeError(f"TeaCache state crossed a resolution change (indicator "
                               f"{tuple(state.previous.shape)} -> {tuple(ind.shape)}) without a reset; reset the "
                               "transformer's stateful hooks (`transformer._reset_stateful_cache()`) between "
                               "resolutions")
        forced = state.previous is None or state.residual is None or i < self.retention or i == n - 1
        if forced:
            compute = True
        else:
            x = relative_l1(ind, state.previous, self.transformer)
            state.accumulated += float(np.polyval(self.poly, x))
            compute = not state.accumulated < self.config.threshold
        if compute:
            state.accumulated = 0.0
        state.previous = ind
        self._record(self.branch(), i, compute)
        return compute

    def _record(self, branch: str, i: int, compute: bool) -> None:
        per_stage = self.stats.setdefault(self.stage, {})
        if current_step(self.transformer) is None and i == 0 and per_stage.get(branch):
            self.stats, per_stage = {}, {}  # outside SURF: a branch's step 0 again starts a new call
            self.stats[self.stage] = per_stage
        per_stage.setdefault(branch, []).append(compute)


class _TembHook(ModelHook):
    """Wan: keeps the condition embedder's time embedding (its first output) for the head's decision."""

    _is_stateful = True

    def __init__(self, shared: _TeaCacheShared):
        super().__init__()
        self.shared = shared
        self.states = shared.states  # so that diffusers' cache_context reaches this hook's states

    def post_forward(self, module, output):
        self.states.get_state().temb = output[0]
        return output

    def reset_state(self, module):
        return module


class _HeadHook(ModelHook):
    """First block: decides; on a skip returns ``h + residual`` (and the text stream unchanged)."""

    _is_stateful = True

    def __init__(self, shared: _TeaCacheShared, returns_text: bool):
        super().__init__()
        self.shared, self.returns_text = shared, returns_text
        self.states = shared.states

    def _indicator(self, module, args, kwargs) -> torch.Tensor:
        sh = self.shared
        if sh.indicator == "temb":
            return self.states.get_state().temb
        temb = _arg(args, kwargs, 2, "temb")
        if sh.indicator == "timestep_proj":
            return temb
        hidden = _arg(args, kwargs, 0, "hidden_states")
        return module.norm1(hidden, emb=temb)[0]  # HunyuanVideo's first modulated input

    def new_forward(self, module, *args, **kwargs):
        state: _BranchState = self.states.get_state()
        hidden = _arg(args, kwargs, 0, "hidden_states")
        with torch.no_grad():
            compute = self.shared.decide(self._indicator(module, args, kwargs))
        state.skip = not compute
        if compute:
            state.head_input = hidden
            return self.fn_ref.original_forward(*args, **kwargs)
        if state.residual.shape != hidden.shape:
            raise RuntimeError("TeaCache residual has another shape than the hidden states: state crossed a "
                               "resolution change without a reset")
        out = hidden + state.residual.to(hidden.dtype)
        return (out, _arg(args, kwargs, 1, "encoder_hidden_states")) if self.returns_text else out

    def reset_state(self, module):
        self.states.reset()
        return module


class _BlockHook(ModelHook):
    """Every later block: passes its inputs through on a skip; the last one keeps the residual."""

    def __init__(self, shared: _TeaCacheShared, is_tail: bool, returns_text: bool):
        super().__init__()
        self.shared, self.is_tail, self.returns_text = shared, is_tail, returns_text

    def new_forward(self, module, *args, **kwargs):
        state: _BranchState = self.shared.states.get_state()
        if state.skip:
            hidden = _arg(args, kwargs, 0, "hidden_states")
            return (hidden, _arg(args, kwargs, 1, "encoder_hidden_states")) if self.returns_text else hidden
        out = self.fn_ref.original_forward(*args, **kwargs)
        if self.is_tail:
            h = out[0] if isinstance(out, tuple) else out
            state.residual = h - state.head_input
            state.head_input = None
        return out


def _blocks(transformer) -> list[tuple[str, torch.nn.Module]]:
    out = []
    for name in _BLOCK_LISTS:
        lst = getattr(transformer, name, None)
        if isinstance(lst, torch.nn.ModuleList):
            out += [(f"{name}.{i}", b) for i, b in enumerate(lst)]
    return out


def apply_teacache(transformer, config: SurfTeaCacheConfig) -> None:
    """Install TeaCache on a Wan2.1 or HunyuanVideo transformer (per instance; ``remove_teacache``
    undoes it). Refused when another cache is installed on it (diffusers allows one)."""
    if not isinstance(config, SurfTeaCacheConfig):
        raise TypeError(f"apply_teacache takes a SurfTeaCacheConfig, got {type(config).__name__}")
    if not isinstance(transformer, torch.nn.Module):
        hint = " (pass pipe.transformer)" if isinstance(getattr(transformer, "transformer", None), torch.nn.Module) \
            else ""
        raise TypeError(f"apply_teacache installs on a transformer model, got a {type(transformer).__name__}{hint}")
    if cp_config(transformer) is not None:
        # its first-block hook would wrap diffusers' split of that block's input: the whole input in, a shard out
        raise ValueError(f"{type(transformer).__name__} is already context-parallel; apply TeaCache before "
                         "enable_parallelism, so that its hooks sit inside the split")
    present = detect(transformer)
    if present:
        raise ValueError(f"{type(transformer).__name__} already has a cache installed ({present[0].name}); diffusers "
                         "allows one cache per model. Remove it first (`transformer.disable_cache()`, "
                         "`remove_teacache(transformer)`, `cache_dit.disable_cache(transformer)`)")
    shared = _TeaCacheShared(transformer, config)
    blocks = _blocks(transformer)
    if len(blocks) < 2:
        raise ValueError(f"TeaCache needs at least two transformer blocks; {type(transformer).__name__} has "
                         f"{len(blocks)}")
    if shared.indicator == "temb":
        HookRegistry.check_if_exists_or_initialize(transformer.condition_embedder).register_hook(_TembHook(shared),
                                                                                                 _TEMB)
    returns_text = type(transformer).__name__ == "HunyuanVideoTransformer3DModel"
    HookRegistry.check_if_exists_or_initialize(blocks[0][1]).register_hook(_HeadHook(shared, returns_text), _HEAD)
    for i, (_, b) in enumerate(blocks[1:], start=1):
        HookRegistry.check_if_exists_or_initialize(b).register_hook(
            _BlockHook(shared, i == len(blocks) - 1, returns_text), _BLOCK)
    transformer._surf_teacache = shared
    # cache_context walks a cached list of child registries: rebuild it to include these hooks
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def remove_teacache(transformer) -> None:
    """Remove what ``apply_teacache`` installed (nothing if it is not installed)."""
    for m in transformer.modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None:
            for name in (_HEAD, _BLOCK, _TEMB):
                reg.remove_hook(name, recurse=False)
    if hasattr(transformer, "_surf_teacache"):
        del transformer._surf_teacache
    HookRegistry.check_if_exists_or_initialize(transformer).invalidate_child_registries_cache()


def teacache_stats(transformer) -> dict[str, dict[str, dict]]:
    """The last call's decisions: ``{stage: {branch: {"computed": n, "skipped": m, "decisions": [bool]}}}``
    (stage ``"call"`` outside SURF; under SURF each stage's name)."""
    shared = getattr(transformer, "_surf_teacache", None)
    if shared is None:
        raise ValueError(f"TeaCache is not installed on this {type(transformer).__name__} (apply_teacache)")
    return {stage: {b: {"computed": sum(d), "skipped": len(d) - sum(d), "decisions": list(d)}
                    for b, d in branches.items()} for stage, branches in shared.stats.items()}


class TeaCache(Accelerator):
    is_cache = True
    name = "TeaCache"

    def __init__(self, shared: _TeaCacheShared):
        self.shared = shared

    def stage_start(self, model, stage: StageInfo) -> None:
        if stage.index == 0:
            self.shared.stats = {}
        self.shared.stage = stage.name

    def stage_end(self, model, stage: StageInfo) -> None:
        self.shared.stage = "call"


def _detect(model) -> list[Accelerator]:
    shared = getattr(model, "_surf_teacache", None)
    return [] if shared is None else [TeaCache(shared)]


def _install(pipe, value: str, *, teacache_fit: Optional[tuple[str, Sequence[float]]] = None) -> str:
    """``--cache teacache:T``; ``teacache_fit``: (indicator, coefficients) for a model TeaCache
    published none for, instead of the published polynomial picked from the model's config."""
    tr = pipe.transformer
    indicator, coefficients = teacache_fit or (None, None)
    apply_teacache(tr, SurfTeaCacheConfig(threshold=cache_threshold("teacache", value), indicator=indicator,
                                          coefficients=coefficients))
    return f"TeaCache (threshold {value}, {tr._surf_teacache.indicator} indicator)"


KIND = AcceleratorKind("teacache", _detect, "teacache:THRESHOLD", _install, remove=remove_teacache)
