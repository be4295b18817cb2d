"""diffusers' own caches (``diffusers.hooks``) under SURF's stages.

Found on a model however they were enabled (``transformer.enable_cache(config)`` or a public
``apply_*`` function, which leaves ``is_cache_enabled`` False), by the names of the hooks diffusers
registers. The protocol (``stages``) resets every stateful hook at each stage's start and end; what
each cache needs beyond that, and what is refused (diffusers 0.42):

- FirstBlockCache: right per stage (per-branch state from ``cache_context``; a stage's first step
  always computes). Under context parallelism its rule reads the whole sequence's residual
  (``context_parallel.relative_l1``), so that every rank skips the same calls.
- PyramidAttentionBroadcast: right per stage (its window is on the model timestep, which SURF sets as
  ``pipe.current_timestep``; its counter restarts at each stage, so the stage's first call computes).
- TaylorSeer: right per stage (warm-up ``disable_cache_before_step`` per stage); refused with
  ``disable_cache_after_step``, a call-long step index.
- SeaCache: right per stage (``cache_context`` carries the stage's step index, step count and sigma,
  so its retention and end steps apply to every stage); refused where it has no indicator for the
  model (it would silently run uncached).
- FasterCache: its attention cache on guidance-distilled models (HunyuanVideo,
  ``is_guidance_distilled=True``, one pass per step), the counter seeded at each later stage so its
  first call computes (reset alone restarts inside the skip window with an empty cache and crashes);
  its CFG cache needs the uncond/cond inputs batched, which these adapters never do: refused.
- MagCache: refused unless the plan is one stage of the call's own schedule
  (``SurfConfig.identity()``): ``mag_ratios`` and ``retention_ratio`` are calibrated for one
  ``num_inference_steps``-long schedule.
- TextKVCache: refused where it caches nothing (diffusers 0.42 hooks NucleusMoE-Image blocks only); it
  is resolution-independent (text keys/values) and reset per stage where it applies.
"""

from __future__ import annotations

import functools

import torch
from diffusers import FirstBlockCacheConfig, SeaCacheConfig

from surf_accel.context_parallel import cp_config, relative_l1
from surf_accel.stages import Accelerator, AcceleratorKind, StageInfo, cache_threshold

# diffusers' hook names (hooks/*.py) -> the cache they belong to; the first name found identifies it
HOOK_NAMES = {
    "fbc_leader_block_hook": "FirstBlockCache",
    "pyramid_attention_broadcast": "PyramidAttentionBroadcast",
    "faster_cache_block": "FasterCache",
    "faster_cache_denoiser": "FasterCache",
    "mag_cache_leader_block_hook": "MagCache",
    "sea_cache_root": "SeaCache",
    "taylorseer_cache": "TaylorSeer",
    "text_kv_cache_transformer": "TextKVCache",
    "text_kv_cache_block": "TextKVCache",
}


def _hooks(model) -> dict[str, list]:
    """Hook name -> the hook objects of that name anywhere under ``model``."""
    found: dict[str, list] = {}
    for m in model.modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is None:
            continue
        for name, hook in reg.hooks.items():
            if name in HOOK_NAMES:
                found.setdefault(name, []).append(hook)
    return found


def _is_single_schedule(plan) -> bool:
    """One stage running the call's own step count: the unpatched schedule (``SurfConfig.identity()``)."""
    return len(plan.stages) == 1 and plan.stages[0].steps == plan.request.num_inference_steps


@torch.compiler.disable
def _fbc_whole_sequence_rule(hook, model, residual: torch.Tensor) -> bool:
    """diffusers' ``FBCHeadBlockHook._should_compute_remaining_blocks`` on the whole sequence."""
    previous = hook.state_manager.get_state().head_block_residual
    if previous is None:
        return True
    return relative_l1(residual, previous, model) > hook.threshold


class DiffusersCache(Accelerator):
    is_cache = True

    def __init__(self, kind: str, hooks: dict[str, list]):
        self.name = kind
        self.hooks = hooks

    def check(self, plan, model, *, cfg: bool) -> None:
        kind, cls = self.name, type(model).__name__
        if kind == "MagCache" and not _is_single_schedule(plan):
            raise ValueError("MagCacheConfig's mag_ratios and retention_ratio are calibrated for one "
                             "num_inference_steps-long schedule at one resolution; SURF's stages run other schedules "
                             f"({', '.join(f'{s.name}: {s.steps} steps' for s in plan.stages)}), so its skips would be "
                             "decided on the wrong ratios. Use FirstBlockCacheConfig, SeaCacheConfig or surf_accel's "
                             "TeaCache (surf_accel.integrations.accelerators.apply_teacache) with SURF, or "
                             "SurfConfig.identity()")
        if kind == "FirstBlockCache" and cp_config(model) is not None:
            # a hook registered later wraps the earlier ones: the cache's head-block hook must sit inside
            # the context-parallel split of the block's input, or it subtracts the whole input from a shard
            for m in model.modules():
                order = getattr(getattr(m, "_diffusers_hook", None), "_hook_order", [])
                split = [i for i, n in enumerate(order) if n.startswith("cp_input---")]
                if "fbc_leader_block_hook" in order and split and order.index("fbc_leader_block_hook") > split[0]:
                    raise ValueError(f"FirstBlockCache was enabled on this {cls} after enable_parallelism, so its hook "
                                     "reads the first block's whole input and the block's sharded output; enable the "
                                     "cache first, then the parallelism")
        if kind == "TaylorSeer" and not _is_single_schedule(plan):
            after = {h.disable_cache_after_step for h in self.hooks["taylorseer_cache"]}
            if after != {None}:
                raise ValueError(f"TaylorSeerCacheConfig(disable_cache_after_step={after.pop()}) counts steps of one "
                                 "call-long schedule; SURF restarts the count at every stage. Set "
                                 "disable_cache_after_step=None (its warm-up, disable_cache_before_step, applies per "
                                 "stage)")
        if kind == "TextKVCache" and "text_kv_cache_block" not in self.hooks:
            raise ValueError(f"TextKVCache caches the text keys/values of NucleusMoE-Image blocks only; on this {cls} "
                             "it hooks no block and would run uncached. Remove it (transformer.disable_cache()) and "
                             "use FirstBlockCacheConfig or TeaCache")
        if kind == "SeaCache":
            root = self.hooks["sea_cache_root"][0]
            if root.raw_vision_callback is None:
                raise ValueError(f"SeaCache has no built-in indicator for this {cls} (diffusers ships one for Wan "
                                 "text-to-video and Cosmos 3) and would silently run uncached; pass "
                                 "SeaCacheConfig(raw_vision_callback=...) or use FirstBlockCacheConfig / TeaCache")
        if kind == "FasterCache":
            den = self.hooks.get("faster_cache_denoiser", [None])[0]
            distilled = den is not None and den.is_guidance_distilled
            if not distilled:
                raise ValueError("FasterCache's CFG cache needs the uncond and cond inputs batched in one transformer "
                                 f"call; the SURF adapter for {cls} calls each branch separately. Set "
                                 "FasterCacheConfig(is_guidance_distilled=True) on a guidance-distilled model "
                                 "(HunyuanVideo) to use its attention cache, or use FirstBlockCacheConfig or "
                                 "TeaCache")
            if not model.config.get("guidance_embeds", False):
                raise ValueError(f"FasterCacheConfig(is_guidance_distilled=True) is for guidance-distilled models "
                                 f"(HunyuanVideo); {cls} is not one, and its CFG branches would share one attention "
                                 "cache. Use FirstBlockCacheConfig or TeaCache")
            if cfg:
                raise ValueError("FasterCache's attention cache is shared by every call of the model, so with a second "
                                 "(true CFG) pass the uncond branch would reuse the cond branch's attention. Call "
                                 "without true classifier-free guidance or use FirstBlockCacheConfig / TeaCache (per "
                                 "branch)")

    def stage_start(self, model, stage: StageInfo) -> None:
        if self.name == "FirstBlockCache" and cp_config(model) is not None:
            for hook in self.hooks["fbc_leader_block_hook"]:
                hook._should_compute_remaining_blocks = functools.partial(_fbc_whole_sequence_rule, hook, model)
        if self.name == "FasterCache" and stage.index > 0:
            # After a reset the counter is 0, and FasterCache computes at 0 only outside its timestep window;
            # a later stage starting inside it would read an empty cache. Its own skip range R as the start value
            # computes the first call and leaves every later decision as the call-long counter would (R = 0 mod R).
            # The first stage starts where the pipeline's own call does: its counter counts that call's steps.
            for hook in self.hooks["faster_cache_block"]:
                hook.state.iteration = hook.block_skip_range


    def stage_end(self, model, stage: StageInfo) -> None:
        for hook in self.hooks.get("fbc_leader_block_hook", ()):
            hook.__dict__.pop("_should_compute_remaining_blocks", None)


def detect_diffusers_caches(model) -> list[Accelerator]:
    hooks = _hooks(model)
    kinds = list(dict.fromkeys(HOOK_NAMES[n] for n in hooks))
    return [DiffusersCache(k, {n: h for n, h in hooks.items() if HOOK_NAMES[n] == k}) for k in kinds]


def _disable(model) -> None:
    if getattr(model, "is_cache_enabled", False):
        model.disable_cache()


def _install_fbc(pipe, value: str) -> str:
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=cache_threshold("fbc", value)))
    return f"FirstBlockCache (threshold {value})"


def _install_seacache(pipe, value: str) -> str:
    pipe.transformer.enable_cache(SeaCacheConfig(threshold=cache_threshold("seacache", value)) if value
                                  else SeaCacheConfig())
    return "SeaCache"


# diffusers' caches are found by one kind, which knows them all by their hooks; the others name --cache forms
KINDS = (
    AcceleratorKind("diffusers", detect_diffusers_caches, remove=_disable),
    AcceleratorKind("fbc", cache_form="fbc:THRESHOLD", install=_install_fbc),
    AcceleratorKind("seacache", cache_form="seacache[:THRESHOLD]", install=_install_seacache),
    AcceleratorKind("magcache", cache_form="magcache", refusal=(
        "MagCache needs mag_ratios calibrated for the model and its whole num_inference_steps-long schedule, "
        "which SURF's stages do not run; use --cache teacache:T or --cache fbc:T")),
)
