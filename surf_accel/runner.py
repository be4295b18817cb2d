"""The SURF stage loop: runs a ``Plan`` with a pipeline's own components.

Per call: prompts (and the I2V image) are encoded once by the adapter; then for each stage

1. its start latent: the caller's noise (first stage), noise reshifting from the previous stage's
   last model output (``ops.reshift_downsample``), or the refine handoff (``refiner.handoff``);
2. its conditioning rebuilt at its resolution (I2V);
3. its steps. With ``SurfConfig.step_precision="pipeline"`` each step is the unpatched pipeline's
   arithmetic: classifier-free guidance in the transformer's dtype, then the ``step`` of a *fresh*
   scheduler of the pipeline's class configured with this stage's sigmas (so a multistep history
   never crosses a switch, and a stage at the request's size reproduces the pipeline bit for bit).
   With ``"float32"`` latents stay float32: Euler stages fuse guidance and the update in one
   ``ops.guided_step``; a multistep solver (UniPC) gets the float32 guidance combine and steps on
   float32 latents. The trained refiner's plain Euler on its straight path is ``ops.guided_step``.

Every random draw comes from the caller's generator, in a fixed order (first-stage noise, reshift
noise, refine noise), so a seed gives one video. Diffusers caches get ``cache_context`` per branch
(in the adapter, with the stage's step index, step count and sigma) and every accelerator is told
each stage's start and end (``surf_accel.stages``) on every model the stage can run:
no cache state crosses a stage. The adapter may pick the model and guidance of each step
(``step_model``: Wan2.2's two experts by timestep). An
interrupted call (``pipe._interrupt``) stops denoising and returns what there is at the request's
size: latents of a smaller stage go through the handoff (without noise) first.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from typing import Any, Iterable, Iterator, Optional

import torch
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from surf_accel import ops
from surf_accel import refiner as refiner_mod
from surf_accel import registry
from surf_accel.planner import Plan, Stage
from surf_accel.schedulers import stage_scheduler
from surf_accel.stages import StageProtocol

logger = logging.getLogger("surf_accel")

STAGE_ATTR = "surf_stage"  # the running Stage on the pipeline, for callbacks (None between stages)
_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def hold(objects: Iterable[Any]) -> Iterator[None]:
    """Hold each of ``objects`` (a pipeline, its models, a refiner) for the block, one re-entrant lock per
    object, all taken in one order (by ``id``) so that calls sharing some of them wait for each other and
    never deadlock. SURF installs per-stage state on the models (window processors, stage resets of the
    caches, the VAE's decode cache): a second call on any of them would run on the first one's state."""
    unique = sorted({id(o): o for o in objects if o is not None}.values(), key=id)
    with _LOCKS_GUARD:
        locks = [_LOCKS.setdefault(o, threading.RLock()) for o in unique]
    with contextlib.ExitStack() as stack:
        for lock in locks:
            stack.enter_context(lock)
        yield


def _randn(shape, call):
    return randn_tensor(tuple(shape), generator=call.generator, device=call.device, dtype=torch.float32)


def window_context(model, window):
    """Shifted-window attention on ``model`` for one stage (``None``: nothing)."""
    if window is None:
        return contextlib.nullcontext()
    return registry.windowed_attention(model, tuple(window))


def stage_attention(model, stage: Stage, config):
    """The attention context of one stage (docs/design.md 4.1): shifted windows for a windowed refine,
    ``config.preview_attention``'s sparse pattern for the preview stages, else nothing: the model keeps
    the user's processors and attention backend. Each gives back exactly what was there."""
    model = getattr(model, "_orig_mod", model)  # a torch.compile wrapper: processors go on the module it compiles
    if stage.window is not None:
        return window_context(model, stage.window)
    if config.preview_attention is not None and stage.name.startswith("preview"):
        return registry.sparse_attention(model, config.preview_attention)
    return contextlib.nullcontext()


def _progress(pipe, stage: Stage):
    cfg = dict(getattr(pipe, "_progress_bar_config", {}) or {})
    cfg.setdefault("desc", f"SURF {stage.name} {stage.height}x{stage.width}")
    return tqdm(total=stage.steps, **cfg)


def _guide(v_c, v_u, guidance: float, dtype):
    """Classifier-free guidance as the pipelines write it, ``v_u + g (v_c - v_u)``, in ``dtype``
    (``None``: the model output's own dtype, the pipeline's arithmetic)."""
    if dtype is not None:
        v_c = v_c.to(dtype)
        v_u = None if v_u is None else v_u.to(dtype)
    return v_c if v_u is None else v_u + guidance * (v_c - v_u)


def _predicted_noise(latents, v, sigma, factor):
    """The model's noise estimate ``x + (1 - s) v``, area-pooled, rescaled to unit variance per sample."""
    eps = latents.to(torch.float32) + (1.0 - sigma) * v.to(torch.float32)
    pooled = torch.nn.functional.avg_pool3d(eps, (1, factor, factor))
    std = pooled.flatten(1).std(dim=1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
    return (pooled / std).contiguous()


@contextlib.contextmanager
def _onloaded(pipe, model) -> Iterator[None]:
    """Under the pipeline's model CPU offload, a model that is none of its components (a refiner) runs
    as the components do: they are offloaded and ``model`` sits on the offload device for the stage,
    then goes back where it was. A no-op otherwise (group offload on the refiner is the refiner's own)."""
    hooks = getattr(pipe, "_all_hooks", None)
    if not hooks or any(model is c for c in pipe.components.values()):
        yield
        return
    for hook in hooks:
        hook.offload()
    home = next(model.parameters()).device
    model.to(pipe._offload_device)
    try:
        yield
    finally:
        model.to(home)


class StageRunner:
    def __init__(self, pipe, adapter, plan: Plan, call, *, refiner=None):
        self.pipe, self.adapter, self.plan, self.call = pipe, adapter, plan, call
        self.refiner = refiner

    def model_for(self, stage: Stage):
        if stage.model == "base":
            return self.pipe.transformer
        if stage.model in ("trained_refiner", "refiner_transformer"):
            r = self.refiner
            return r.transformer if isinstance(r, refiner_mod.Refiner) else r
        raise ValueError(f"unknown stage model {stage.model!r}")

    def run(self):
        pipe, call, plan = self.pipe, self.call, self.plan
        pipe._num_timesteps = plan.total_steps
        # every accelerator on every transformer the stages use, checked before any compute
        self.protocol = StageProtocol(plan, [m for s in plan.stages for m in self.adapter.stage_models(
            pipe, call, s, self.model_for(s), plan.config)], cfg=call.do_cfg)
        latents: Optional[torch.Tensor] = None
        ctx = None
        # per-stage conditioning by pixel size: a refine at the preview's size (request = optimal size)
        # reuses the preview's instead of encoding the I2V image through the VAE again
        contexts: dict[tuple[int, int], object] = {}
        for si, stage in enumerate(plan.stages):
            if stage.start == "noise":
                latents = self.adapter.initial_latents(pipe, call, stage)
            elif stage.start == "handoff":
                # the preview as the pipeline would decode it (e.g. an I2V first frame put back)
                latents = self._handoff(self.adapter.finalize(pipe, latents, call, ctx), stage)
            elif stage.start != "reshift":
                raise ValueError(f"unknown stage start {stage.start!r}")
            size = (stage.height, stage.width)
            if size not in contexts:
                contexts[size] = self.adapter.stage_context(pipe, call, stage)
            ctx = contexts[size]
            nxt = plan.stages[si + 1] if si + 1 < len(plan.stages) else None
            switch_to = nxt if nxt is not None and nxt.start == "reshift" else None
            latents = self._run_stage(stage, latents, ctx, switch_to)
            if pipe.interrupt:  # as the pipeline does: stop denoising, decode what there is
                out = plan.output_stage
                if tuple(latents.shape[2:]) != tuple(out.latent_size) and out.start == "handoff":
                    latents = self._to_request_size(self.adapter.finalize(pipe, latents, call, ctx))
                    size = (out.height, out.width)
                    ctx = contexts[size] if size in contexts else self.adapter.stage_context(pipe, call, out)
                break
        pipe._current_timestep = None
        latents = self.adapter.finalize(pipe, latents, call, ctx)
        return self.adapter.postprocess(pipe, latents, call)

    # ------------------------------------------------------------------ transitions
    def _reshift(self, latents, v, sigma, nxt: Stage):
        """``nxt``'s start: ``a * down(x0_hat) + nxt.reshift_noise * eps`` with ``a = 1 - reshift_noise``
        for the consistent reshift and ``a = 1`` for the paper's and the additive_low form."""
        cfg = self.plan.config
        b, c = latents.shape[:2]
        factor = latents.shape[-1] // nxt.latent_size[2]
        if cfg.renoise == "fresh":
            noise = _randn((b, c) + tuple(nxt.latent_size), self.call)
        else:
            noise = _predicted_noise(latents, v, sigma, factor)
        op_mode = "consistent" if cfg.reshift == "consistent" else "paper"  # the op's "paper": no (1 - s) factor
        return ops.reshift_downsample(latents.to(torch.float32).contiguous(), v.to(torch.float32).contiguous(), noise,
                                      float(sigma), float(nxt.reshift_noise), factor, op_mode)

    def _to_request_size(self, latents):
        """An interrupted call's latents at the request's size: through the handoff, without noise."""
        out = self.plan.output_stage
        if tuple(latents.shape[2:]) == tuple(out.latent_size) or out.start != "handoff":
            return latents
        return refiner_mod.handoff(self.pipe, self.adapter, latents, out, self.plan.config, None, 1.0)

    def _handoff(self, preview, stage: Stage):
        b, c = preview.shape[:2]
        if stage.model == "trained_refiner":
            noise, sigma = None, 1.0
        else:
            noise, sigma = _randn((b, c) + tuple(stage.latent_size), self.call), float(stage.sigmas[0])
        return refiner_mod.handoff(self.pipe, self.adapter, preview, stage, self.plan.config, noise, sigma)

    # ------------------------------------------------------------------ one stage
    def _run_stage(self, stage: Stage, latents, ctx, switch_to: Optional[Stage]):
        pipe, call, adapter = self.pipe, self.call, self.adapter
        model = self.model_for(stage)
        sigmas = stage.sigmas
        n = stage.steps
        T = self.plan.scheduler.num_train_timesteps
        pipeline_steps = stage.use_scheduler and self.plan.config.step_precision == "pipeline"
        if stage.use_scheduler and (pipeline_steps or self.plan.scheduler.kind == "unipc"):
            # a stage ending in a switch keeps its last level (the reshift target) so that a multistep
            # solver does not treat its last evaluation as the end of sampling
            sched = stage_scheduler(pipe.scheduler, sigmas if switch_to is not None else sigmas[:-1], call.device)
            timesteps = sched.timesteps
        else:
            sched = None
            timesteps = torch.tensor(sigmas[:-1], dtype=torch.float32, device=call.device) * T
        guidance = call.guidance_scale if stage.guidance is None else stage.guidance
        if stage.model == "trained_refiner":
            guidance = 1.0
        do_cfg = guidance > 1.0
        if do_cfg and call.negative_prompt_embeds is None:
            raise ValueError(f"stage {stage.name!r} uses guidance {guidance} but the call has no negative "
                             "embeddings (it runs without classifier-free guidance); set refine_guidance <= 1 or "
                             "call with classifier-free guidance (Wan: guidance_scale > 1; HunyuanVideo: "
                             "true_cfg_scale > 1 and a negative prompt; HunyuanVideo-1.5: an enabled guider with "
                             "guidance_scale > 1)")
        # every model the stage can run (a two-expert pipeline routes steps to either) keeps its own
        # cache state and gets the stage's accelerator events, attention and compile watch
        models = adapter.stage_models(pipe, call, stage, model, self.plan.config)
        with contextlib.ExitStack() as stack:
            for m in models:
                stack.enter_context(_onloaded(pipe, m))
            info = stack.enter_context(self.protocol.stage(models, self.plan.stages.index(stage)))
            for m in models:
                stack.enter_context(stage_attention(m, stage, self.plan.config))
                stack.enter_context(registry.compile_watch(pipe, m, stage, timesteps[0]))
            bar = stack.enter_context(_progress(pipe, stage))
            setattr(pipe, STAGE_ATTR, stage)
            stack.callback(setattr, pipe, STAGE_ATTR, None)
            for i in range(n):
                if pipe.interrupt:
                    continue
                t = timesteps[i]
                pipe._current_timestep = t
                sigma = float(sigmas[i])
                self.protocol.step(models, info, i, sigma, t)
                step_model, g = adapter.step_model(pipe, call, stage, model, t, guidance, self.plan.config)
                # the adapter's branches (cond, and uncond with CFG) and the scale that combines them
                v_c, v_u, g = adapter.guided_predictions(pipe, step_model, latents, t, call, ctx, guidance=g,
                                                         do_cfg=do_cfg, step_index=stage.step_offset + i,
                                                         num_steps=self.plan.total_steps, sigma=sigma)
                if i == n - 1 and switch_to is not None:
                    latents = self._reshift(latents, _guide(v_c, v_u, g, torch.float32), sigma, switch_to)
                elif sched is not None:
                    dtype = None if pipeline_steps else torch.float32
                    x = latents if pipeline_steps else latents.to(torch.float32)
                    latents = sched.step(_guide(v_c, v_u, g, dtype), t, x, return_dict=False)[0]
                else:
                    latents = ops.guided_step(latents.to(torch.float32).contiguous(), v_c.to(torch.float32).contiguous(),
                                              None if v_u is None else v_u.to(torch.float32).contiguous(),
                                              float(g), sigma, float(sigmas[i + 1]))
                latents = self._callback(stage, stage.step_offset + i, t, latents)
                bar.update()
        return latents

    def _callback(self, stage: Stage, index, t, latents):
        """``callback_on_step_end`` after step ``index`` (global over the stages) of ``stage``: it sees the
        step's latents and may return new ones of the same shape (``ValueError`` naming the stage and the
        shape otherwise: latents of another stage's size would run silently at the wrong size)."""
        call = self.call
        if call.callback is None:
            return latents
        local = {"latents": latents, "prompt_embeds": call.prompt_embeds,
                 "negative_prompt_embeds": call.negative_prompt_embeds}
        kwargs = {k: local[k] for k in call.callback_inputs}
        out = call.callback(self.pipe, index, t, kwargs) or {}
        new = out.pop("latents", latents)
        if not isinstance(new, torch.Tensor) or tuple(new.shape) != tuple(latents.shape):
            found = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise ValueError(f"callback_on_step_end returned latents {found} at step {index}, in SURF's "
                             f"{stage.name} stage ({stage.height}x{stage.width} px), whose latents are "
                             f"{tuple(latents.shape)}; return latents of the stage's shape (pipe.surf_stage "
                             "names the stage a callback runs in)")
        latents = new
        call.prompt_embeds = out.pop("prompt_embeds", call.prompt_embeds)
        call.negative_prompt_embeds = out.pop("negative_prompt_embeds", call.negative_prompt_embeds)
        return latents


def run_plan(pipe, adapter, plan: Plan, call, *, refiner=None):
    return StageRunner(pipe, adapter, plan, call, refiner=refiner).run()
