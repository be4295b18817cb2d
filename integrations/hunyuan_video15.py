"""SURF adapter for diffusers' HunyuanVideo-1.5 pipelines: ``HunyuanVideo15Pipeline`` (T2V) and
``HunyuanVideo15ImageToVideoPipeline`` (I2V), the 8.3B ``HunyuanVideo15Transformer3DModel``.

What differs from the base adapter:

- **Guidance through the pipeline's guider.** The pipeline has no ``guidance_scale`` argument: its
  ``guider`` (diffusers' ``ClassifierFreeGuidance``) decides per step how many branches run and
  combines them (``guidance_scale``, ``guidance_rescale``, ``use_original_formulation``,
  ``start``/``stop``; ``enabled=False`` for guidance-distilled checkpoints). Every step here does
  what the pipeline's loop does: ``guider.set_state(step, num_steps, t)``, ``prepare_inputs``, one
  transformer pass per batch inside ``transformer.cache_context`` named by the guider
  (``"pred_cond"`` / ``"pred_uncond"``), then the guider's own combine. ``step`` is the step's global
  index over all SURF stages and ``num_steps`` the plan's total (the call's steps under the identity
  config), so ``start``/``stop`` act on the SURF call as a whole. Other guiders (PAG, APG, ...) are
  refused: their model hooks or cross-step state (momentum) have no defined meaning across a
  resolution switch.
- **Text**: Qwen2.5-VL states with their mask and ByT5 glyph states with theirs (``encode_prompt``,
  once per call per branch); the negative branch is encoded when the guider runs CFG, as the pipeline
  decides it. T2V passes zero SigLIP states (729 tokens), I2V the image's (encoded once per call).
- **Latents** ``(B, 32, T, H, W)``: ``vae.config.latent_channels``, ``T = (frames - 1) // 4 + 1``,
  ``H, W = pixels // 16`` (``vae.spatial_compression_ratio``), scaled by ``vae.config.scaling_factor``;
  the first noise is drawn in the transformer's dtype, as ``prepare_latents`` draws it. The model
  input is ``[latents, condition latents, mask]`` on channels (65 = 32 + 32 + 1): zeros for T2V; for
  I2V the image's latent at frame 0 and a first-frame mask, rebuilt at every stage's resolution from
  the image the pipeline cropped to the request's size.
- **Schedule**: like HunyuanVideo, the pipeline hands ``FlowMatchEulerDiscreteScheduler`` the
  unshifted sigmas ``linspace(1, 0, n + 1)[:-1]`` (``SchedulerSpec(grid="uniform")``).
- **Size**: T2V's default size and I2V's size (from the image's aspect ratio) are the pipeline's own
  buckets around ``transformer.config.target_size`` (640 for the 480p checkpoints, 960 for 720p);
  the optimal (training) size of a checkpoint is that bucket area, ``target_size ** 2``.

Refused: other guiders, the call's ``sigmas``, I2V transformers with ``use_meanflow`` (the step
distilled checkpoints read the next step's timestep, which a SURF stage does not keep), trained
``surf_accel.Refiner`` (Wan-family); ``refiner=`` may be another ``HunyuanVideo15Transformer3DModel``
with the same interface.
"""

from __future__ import annotations

import copy
import logging
from typing import Optional

import torch
from diffusers.pipelines.hunyuan_video1_5.pipeline_output import HunyuanVideo15PipelineOutput

from surf_accel.config import SurfConfig
from surf_accel.cost_model import FamilyDefaults, HunyuanVideo15Spec, VaeSpec
from surf_accel.family import (AttentionSpec, CallEncoding, Family, FamilyAdapter, PreparedCall, ScaledLatentsVAE,
                               check_diffusers_version, diffusers_class, noise_latents)
from surf_accel.integrations.accelerators.sparse_attention import HunyuanVideoSparseAttnProcessor
from surf_accel.integrations.hunyuan_video import patch_sizes
from surf_accel.integrations.window_processors import HunyuanVideoWindowAttnProcessor
from surf_accel.planner import FamilySpec, Request, SchedulerSpec
from surf_accel.refiner import Refiner
from surf_accel.schedulers import uniform_grid_scheduler_spec

logger = logging.getLogger("surf_accel")

SUPPORTED = ("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline")
TRANSFORMER = "HunyuanVideo15Transformer3DModel"
SUPPORTED_GUIDERS = ("ClassifierFreeGuidance",)
# The checkpoints' bucket base sizes: Tencent-Hunyuan/HunyuanVideo-1.5 hyvideo/pipelines/
# hunyuan_video_pipeline.py `target_size_config` ("480p": 640, "720p": 960, bucket stride 16), which
# diffusers keeps as `HunyuanVideo15Transformer3DModel.config.target_size` (default 640). The pipeline's
# sizes are the buckets of `generate_crop_size_list(target_size, 16)`: at most (target_size / 16)^2
# patches of 16x16 px, i.e. an area of target_size^2 pixels (480p: 480x848 at 16:9; 720p: 720x1280).
DEFAULT_TARGET_SIZE = 640
# the pipeline's own inputs of the transformer, named as the guider batches them
GUIDER_INPUTS = ("encoder_hidden_states", "encoder_attention_mask", "encoder_hidden_states_2",
                 "encoder_attention_mask_2")


class HunyuanVideo15Adapter(ScaledLatentsVAE, FamilyAdapter):
    family = "hunyuanvideo-1.5"
    supported_pipelines = SUPPORTED
    default_preset = "paper"  # the 480p checkpoints at 720p are Wan2.1's situation (a 480p model, 720p asked for)
    fps = 24  # the pipeline's I2V example exports at 24 fps; 121 frames = 5 s

    # ------------------------------------------------------------------ checks and geometry
    def check_pipeline(self, pipe) -> None:
        check_diffusers_version()
        if diffusers_class(pipe, SUPPORTED) is None:
            raise TypeError(f"the HunyuanVideo-1.5 adapter supports {', '.join(SUPPORTED)}; got {type(pipe).__name__}")
        transformer = getattr(pipe, "transformer", None)
        if transformer is None or type(transformer).__name__ != TRANSFORMER:
            raise TypeError(f"surf_accel needs the pipeline's transformer to be a {TRANSFORMER}; got "
                            f"{type(transformer).__name__}")
        self.check_guider(pipe)
        if self.is_i2v(pipe) and transformer.config.get("use_meanflow"):
            raise TypeError("this HunyuanVideo-1.5 transformer has use_meanflow=True (a step-distilled checkpoint): "
                            "it reads the next step's timestep, which a SURF stage switch does not keep; use a "
                            "checkpoint without meanflow (e.g. the 480p/720p i2v transformers) or the unpatched pipeline")
        self.scheduler_spec(pipe)  # raises TypeError for an unsupported scheduler

    @staticmethod
    def check_guider(pipe) -> None:
        guider = getattr(pipe, "guider", None)
        cls = type(guider)
        if cls.__name__ not in SUPPORTED_GUIDERS or not cls.__module__.startswith("diffusers"):
            raise TypeError(f"surf_accel drives HunyuanVideo-1.5 with diffusers' {', '.join(SUPPORTED_GUIDERS)} "
                            f"guider only (any guidance_scale, guidance_rescale, use_original_formulation, start/stop, "
                            f"enabled); got {cls.__name__}: guiders that hook the model or carry state across steps "
                            "have no defined meaning across a resolution switch. Set pipe.guider = "
                            "ClassifierFreeGuidance(guidance_scale=...) or use the unpatched pipeline")

    def scheduler_spec(self, pipe) -> SchedulerSpec:
        return uniform_grid_scheduler_spec(pipe)

    def is_i2v(self, pipe) -> bool:
        return diffusers_class(pipe, SUPPORTED).__name__ == "HunyuanVideo15ImageToVideoPipeline"

    def check_refiner(self, pipe, refiner) -> None:
        """Training-free refine only: ``None`` (the base transformer) or another
        ``HunyuanVideo15Transformer3DModel`` reading the same latents, text and image states."""
        if refiner is None:
            return
        if isinstance(refiner, Refiner) or type(refiner).__name__ != TRANSFORMER:
            raise TypeError(f"a HunyuanVideo-1.5 pipeline takes refiner=None or a {TRANSFORMER} (training-free refine); "
                            f"trained surf_accel.Refiner checkpoints are Wan-family; got {type(refiner).__name__}")
        rc, bc = refiner.config, pipe.transformer.config
        for key in ("in_channels", "out_channels", "text_embed_dim", "text_embed_2_dim", "image_embed_dim",
                    "patch_size", "patch_size_t", "use_meanflow"):
            if rc.get(key) != bc.get(key):
                raise ValueError(f"refiner transformer has {key}={rc.get(key)!r} but the pipeline's transformer has "
                                 f"{bc.get(key)!r}; a training-free refiner must share its interface")

    @staticmethod
    def target_size(pipe) -> int:
        return int(pipe.transformer.config.get("target_size") or DEFAULT_TARGET_SIZE)

    def family_spec(self, pipe) -> FamilySpec:
        cfg = pipe.transformer.config
        p = int(cfg.patch_size)
        return FamilySpec(self.family, int(pipe.vae_scale_factor_spatial), int(pipe.vae_scale_factor_temporal),
                          (int(cfg.patch_size_t), p, p), self.target_size(pipe) ** 2)

    def cost_spec(self, transformer, text_len: int):
        return HunyuanVideo15Spec.from_config(transformer.config, type(transformer).__name__, text_len)

    # ------------------------------------------------------------------ call preparation
    _TEXT_ARGS = ("negative_prompt", "prompt_embeds", "negative_prompt_embeds", "prompt_embeds_mask",
                  "negative_prompt_embeds_mask", "prompt_embeds_2", "prompt_embeds_mask_2", "negative_prompt_embeds_2",
                  "negative_prompt_embeds_mask_2")

    def check_call(self, pipe, a: dict) -> tuple:
        text_args = {k: a[k] for k in self._TEXT_ARGS}
        if self.is_i2v(pipe):
            pipe.check_inputs(prompt=a["prompt"], image=a["image"], **text_args)
        else:
            pipe.check_inputs(prompt=a["prompt"], height=a["height"], width=a["width"], **text_args)
        return None, []  # the pipeline takes no step callbacks

    def start_call(self, pipe, a: dict) -> None:
        # the call state the pipeline sets (it has no guidance_scale of its own)
        pipe._attention_kwargs = a["attention_kwargs"]
        pipe._current_timestep = None
        pipe._interrupt = False

    def encode_call(self, pipe, a: dict, n_prompts: int, nvp: int, device: torch.device) -> CallEncoding:
        batch = n_prompts * nvp
        tdtype = pipe.transformer.dtype
        image = None
        if self.is_i2v(pipe):
            image = a["image"]
            height, width = pipe.video_processor.calculate_default_height_width(
                height=image.size[1], width=image.size[0], target_size=pipe.target_size)
            image = pipe.video_processor.resize(image, height=height, width=width, resize_mode="crop")
            image_embeds = pipe.encode_image(image=image, batch_size=batch, device=device, dtype=tdtype)
        else:
            height, width = a["height"], a["width"]
            if height is None and width is None:
                height, width = pipe.video_processor.calculate_default_height_width(
                    pipe.default_aspect_ratio[1], pipe.default_aspect_ratio[0], pipe.target_size)
            # the pipeline's zero SigLIP states, one row per video (it allocates one per prompt, which the
            # transformer cannot pair with num_videos_per_prompt > 1 latents)
            image_embeds = torch.zeros(batch, pipe.vision_num_semantic_tokens, pipe.vision_states_dim, dtype=tdtype,
                                       device=device)

        def encode(prompt, embeds, mask, embeds_2, mask_2):
            return pipe.encode_prompt(prompt=prompt, device=device, dtype=tdtype, batch_size=n_prompts,
                                      num_videos_per_prompt=nvp, prompt_embeds=embeds, prompt_embeds_mask=mask,
                                      prompt_embeds_2=embeds_2, prompt_embeds_mask_2=mask_2)

        pe, mask, pe_2, mask_2 = encode(a["prompt"], a["prompt_embeds"], a["prompt_embeds_mask"], a["prompt_embeds_2"],
                                        a["prompt_embeds_mask_2"])
        do_cfg = self._guider_runs_cfg(pipe.guider)
        ne = neg_mask = ne_2 = neg_mask_2 = None
        if do_cfg:
            ne, neg_mask, ne_2, neg_mask_2 = encode(a["negative_prompt"], a["negative_prompt_embeds"],
                                                    a["negative_prompt_embeds_mask"], a["negative_prompt_embeds_2"],
                                                    a["negative_prompt_embeds_mask_2"])
        scale = float(pipe.guider.guidance_scale) if do_cfg else 1.0
        extra = dict(n_prompts=n_prompts, mask=mask, embeds_2=pe_2, mask_2=mask_2, negative_mask=neg_mask,
                     negative_embeds_2=ne_2, negative_mask_2=neg_mask_2, image_embeds=image_embeds, image=image)
        request = Request(int(height), int(width), a["num_frames"], a["num_inference_steps"], scale)
        return CallEncoding(request=request, guidance_scale=scale, do_cfg=do_cfg, prompt_embeds=pe,
                            negative_prompt_embeds=ne, extra=extra)

    @staticmethod
    def _guider_runs_cfg(guider) -> bool:
        """The pipeline's test for encoding the negative prompt, ``guider._enabled and
        guider.num_conditions > 1``, on the guider's state before any step of this call (a copy: the
        pipeline's own guider keeps whatever state an earlier call left)."""
        probe = copy.copy(guider)
        probe.set_state(step=0, num_inference_steps=None, timestep=None)
        return bool(probe._enabled and probe.num_conditions > 1)

    # ------------------------------------------------------------------ latents and conditioning
    def initial_latents(self, pipe, call: PreparedCall, stage) -> torch.Tensor:
        """The first stage's noise ``(B, C, T, H, W)``, drawn in the transformer's dtype as the pipeline's
        ``prepare_latents`` does (float32 holding those values)."""
        shape = (call.batch, int(pipe.num_channels_latents)) + tuple(stage.latent_size)
        return noise_latents(call, shape, stage, dtype=pipe.transformer.dtype)

    def stage_context(self, pipe, call: PreparedCall, stage):
        """``(condition latents, mask)`` at the stage's size, by the pipeline's own
        ``prepare_cond_latents_and_mask``: zeros for T2V; for I2V the image's latent at frame 0 (the
        request-size image the pipeline cropped, resized to the stage) and a first-frame mask."""
        shape = (call.batch, int(pipe.num_channels_latents)) + tuple(stage.latent_size)
        placeholder = torch.empty(shape, device="meta")  # the method reads only its shape
        dtype = pipe.transformer.dtype
        if not self.is_i2v(pipe):
            return pipe.prepare_cond_latents_and_mask(placeholder, dtype, call.device)
        image = call.extra["image"]
        if image.size != (stage.width, stage.height):
            image = pipe.video_processor.resize(image, height=stage.height, width=stage.width)
        return pipe.prepare_cond_latents_and_mask(latents=placeholder, image=image, batch_size=call.batch,
                                                  height=stage.height, width=stage.width, dtype=dtype,
                                                  device=call.device)

    def guided_predictions(self, pipe, model, latents, timestep, call: PreparedCall, ctx, *, guidance: float,
                           do_cfg: bool, step_index: int, num_steps: int, sigma: float):
        """The pipeline's guider step on ``latents`` ``(B, C, T, H, W)`` -> ``(combined prediction, None, 1.0)``
        (the guider decides its own branches; ``do_cfg`` is the runner's reading of the same scale).

        ``guidance`` other than the call's (``SurfConfig.refine_guidance``) runs a copy of the guider
        with that ``guidance_scale``.
        """
        guider = pipe.guider
        if guidance != call.guidance_scale:
            guider = copy.copy(guider)
            guider.guidance_scale = guidance
        e = call.extra
        cond, mask = ctx
        dtype = model.dtype
        # the pipeline's latents are in the transformer's dtype; the runner's may be float32 holding them
        x = torch.cat([latents.to(dtype), cond.to(dtype), mask.to(dtype)], dim=1)
        if x.shape[1] != model.config.in_channels:
            raise ValueError(f"{type(model).__name__} expects {model.config.in_channels} input channels, got "
                             f"{x.shape[1]} (latents + condition latents + mask)")
        t = timestep.expand(x.shape[0]).to(x.dtype)
        inputs = dict(zip(GUIDER_INPUTS, ((call.prompt_embeds, call.negative_prompt_embeds),
                                          (e["mask"], e["negative_mask"]), (e["embeds_2"], e["negative_embeds_2"]),
                                          (e["mask_2"], e["negative_mask_2"]))))
        guider.set_state(step=step_index, num_inference_steps=num_steps, timestep=timestep)
        batches = guider.prepare_inputs(inputs)
        for b in batches:
            guider.prepare_models(model)
            with self.cache_context(model, getattr(b, guider._identifier_key)):
                b.noise_pred = model(hidden_states=x, image_embeds=e["image_embeds"], timestep=t,
                                     attention_kwargs=call.attention_kwargs, return_dict=False,
                                     **{k: getattr(b, k) for k in GUIDER_INPUTS})[0]
            guider.cleanup_models(model)
        return guider(batches)[0], None, 1.0

    # ------------------------------------------------------------------ VAE
    @staticmethod
    def _check_vae_batch(pipe, x: torch.Tensor) -> None:
        if x.shape[0] > 1 and not getattr(pipe.vae, "use_slicing", False):
            raise ValueError(f"diffusers' {type(pipe.vae).__name__} cannot encode or decode {x.shape[0]} videos at "
                             "once (its causal attention mask does not broadcast over the batch; the unpatched "
                             "pipeline fails the same way): call pipe.vae.enable_slicing() first")

    def decode(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        self._check_vae_batch(pipe, latents)
        return super().decode(pipe, latents)

    def encode(self, pipe, video: torch.Tensor) -> torch.Tensor:
        self._check_vae_batch(pipe, video)
        return super().encode(pipe, video)

    def output(self, frames):
        return HunyuanVideo15PipelineOutput(frames=frames)


__all__ = ["HunyuanVideo15Adapter", "SUPPORTED_GUIDERS"]


# ---------------------------------------------------------------------------- the family's declaration
def _targets(transformer) -> list:
    return [block.attn for block in transformer.transformer_blocks]


def _text_sources(kwargs) -> tuple:
    """The forward inputs the valid text count depends on (a pipeline passes the same objects every step)."""
    return tuple(kwargs.get(k) for k in ("encoder_attention_mask", "encoder_attention_mask_2", "image_embeds"))


def _text_lengths(sources: tuple) -> Optional[tuple[int, ...]]:
    """Valid joint-text tokens per batch item: the transformer joins [valid image, valid ByT5, valid Qwen,
    padding]; all-zero image states (text-to-video) are masked out, other image tokens are all valid."""
    mask, mask_2, image = sources
    if mask is None:
        return None
    n = (mask != 0).sum(1) + (mask_2 != 0).sum(1) + (0 if bool(torch.all(image == 0)) else image.shape[1])
    return tuple(int(x) for x in n.tolist())


MODELS = {
    # HunyuanVideo-1.5 8.3B: HunyuanVideo15Transformer3DModel()'s defaults in diffusers, which are the
    # published config (tencent/HunyuanVideo-1.5 transformer/480p_t2v/config.json: hidden_size 2048,
    # heads_num 16, mm_double_blocks_depth 54, mm_single_blocks_depth 0, mlp_width_ratio 4, patch [1, 1, 1],
    # text_states_dim 3584, vision_states_dim 1152; in_channels 32 + 32 + 1). One spec per checkpoint
    # resolution: the 480p and 720p transformers share the shape and differ in their optimal size.
    "hunyuanvideo-1.5-480p": HunyuanVideo15Spec("hunyuanvideo-1.5-480p"),
    "hunyuanvideo-1.5-720p": HunyuanVideo15Spec("hunyuanvideo-1.5-720p", family="hunyuanvideo-1.5-720p"),
}
# AutoencoderKLHunyuanVideo15() default config (= HunyuanVideo-1.5's VAE, 16x spatial, 4x temporal, 32
# channels), measure_vae(frames=(61, 121), size=(720, 1280)) on the meta device: 1755 / 3077 MFLOP per
# pixel encode / decode at 121 frames. The fit holds near 121 frames (its mid-block attention over the
# whole latent video grows faster than linearly, hence the negative intercept).
HUNYUAN15_VAE = VaeSpec(enc_a=-8.65e6, enc_b=14.70e6, dec_a=6.49e6, dec_b=25.59e6, spatial=16, temporal=4)
# the checkpoints' bucket areas, target_size ** 2 (640 for 480p, 960 for 720p)
HUNYUAN15_FAMILIES = {res: FamilySpec("hunyuanvideo-1.5", 16, 4, (1, 1, 1), size * size)
                      for res, size in (("480p", 640), ("720p", 960))}
# HunyuanVideo15Pipeline: FlowMatchEulerDiscreteScheduler on the uniform grid it passes as sigmas; shift 7.0
# is Tencent's default flow_shift (the shift does not change a FLOP count)
HUNYUAN15_SCHEDULER = SchedulerSpec("euler", 7.0, grid="uniform")


FAMILY = Family(
    "hunyuanvideo-1.5",
    HunyuanVideo15Adapter(),
    models=MODELS,
    # the pipeline's guider runs CFG (two passes) unless a distilled checkpoint disables it; 121 frames
    defaults={f"hunyuanvideo-1.5-{res}": FamilyDefaults(fam, HUNYUAN15_SCHEDULER, HUNYUAN15_VAE, cfg=True,
                                                        preset="paper", frames=121)
              for res, fam in HUNYUAN15_FAMILIES.items()},
    presets={
    # HunyuanVideo-1.5 at its default 121 frames (31 latent frames): the paper's plan plus temporal refine
    # windows of 8 latent frames (whole H and W; blocks 8 + 8 + 8 + 7, shifted 4 + 8 + 8 + 8 + 3), the
    # estimate rows of benchmarks/results/estimate_hunyuanvideo15.md. Opt-in: the family's default stays
    # `paper` (dense refine) until the window's effect on quality is measured on real weights.
    "hunyuan15-windows": (
        SurfConfig(reshift="paper", window=(8, 1000, 1000), name="hunyuan15-windows"),
        "the paper's plan for HunyuanVideo-1.5 with temporal refine windows of 8 latent frames (whole H and W; "
        "not measured for quality yet: the family's default is paper)",
    ),
    },
    attention=(AttentionSpec(TRANSFORMER, _targets, patch_sizes, _text_sources, _text_lengths,
                             HunyuanVideoWindowAttnProcessor, HunyuanVideoSparseAttnProcessor,
                             ("HunyuanVideoAttnProcessor2_0",)),),
)
