"""SURF adapter for diffusers' ``HunyuanVideoPipeline`` (HunyuanVideo T2V, the 13B
``HunyuanVideoTransformer3DModel``).

What is HunyuanVideo-specific here:

- The transformer takes the timestep in [0, 1000], Llama text states with their attention mask
  (``encoder_attention_mask``, right-padded), CLIP pooled text (``pooled_projections``) and the
  *embedded* guidance ``guidance_scale * 1000`` (a guidance-distilled model: one pass per step).
  True classifier-free guidance is a second pass, only with ``true_cfg_scale > 1`` and a negative
  prompt, as the pipeline does.
- Latents are ``(B, C, T, H, W)`` with ``C = transformer.config.in_channels`` (16 for the 13B
  model), ``T = (frames - 1) // 4 + 1``, ``H, W = pixels // 8``, scaled by the VAE's
  ``scaling_factor`` (no mean/std).
- The pipeline hands its ``FlowMatchEulerDiscreteScheduler`` the unshifted sigmas
  ``linspace(1, 0, n + 1)[:-1]`` (the scheduler shifts them with its ``shift``, 7.0 in the published
  config); the planner gets that grid (``SchedulerSpec(grid="uniform")``) so that a stage at the
  request's size reproduces the unpatched schedule. Each stage's shift follows
  ``SurfConfig.shift_rule`` from the scheduler's shift at the request's size.

Image-to-video variants (``HunyuanVideoImageToVideoPipeline``, SkyReels, FramePack) are refused with
a clear error; HunyuanVideo-1.5 has its own adapter (``integrations.hunyuan_video15``).
"""

from __future__ import annotations

import torch
from diffusers.pipelines.hunyuan_video.pipeline_output import HunyuanVideoPipelineOutput

from surf_accel.config import SurfConfig
from surf_accel.cost_model import FamilyDefaults, HunyuanVideoSpec, VaeSpec
from surf_accel.family import (AttentionSpec, CallEncoding, Family, FamilyAdapter, PreparedCall, ScaledLatentsVAE,
                               check_diffusers_version, diffusers_class, noise_latents)
from surf_accel.integrations.accelerators.sparse_attention import HunyuanVideoSparseAttnProcessor
from surf_accel.integrations.accelerators.surf_teacache import TeaCacheModel
from surf_accel.integrations.window_processors import (HunyuanVideoWindowAttnProcessor, mask_text_lengths,
                                                       mask_text_sources)
from surf_accel.planner import FamilySpec, Request, SchedulerSpec
from surf_accel.refiner import Refiner
from surf_accel.schedulers import uniform_grid_scheduler_spec

# HunyuanVideo's optimal (training) resolution: 720x1280. The released T2V checkpoint is
# "hunyuan-video-t2v-720p"; Tencent/HunyuanVideo's hyvideo/config.py samples at --video-size 720 1280,
# --video-length 129, --flow-shift 7.0 by default, and its README lists "720p (recommended)"
# (720px1280px129f) above 540p (544px960px129f). diffusers' HunyuanVideoPipeline defaults match.
HUNYUAN_OPTIMAL_AREA = 720 * 1280
SUPPORTED = ("HunyuanVideoPipeline",)
REFUSED = {
    "HunyuanVideoImageToVideoPipeline": "an image-to-video pipeline",
    "HunyuanSkyreelsImageToVideoPipeline": "an image-to-video pipeline",
    "HunyuanVideoFramepackPipeline": "an image-to-video (FramePack) pipeline",
}
TRANSFORMER = "HunyuanVideoTransformer3DModel"


class HunyuanVideoAdapter(ScaledLatentsVAE, FamilyAdapter):
    family = "hunyuanvideo"
    supported_pipelines = SUPPORTED
    refused_pipelines = REFUSED
    default_preset = "hunyuan-paper"
    fps = 24  # 129 frames = 5 s at 24 fps

    def __init__(self, optimal_area: int = HUNYUAN_OPTIMAL_AREA):
        self.optimal_area = optimal_area

    # ------------------------------------------------------------------ checks and geometry
    def check_pipeline(self, pipe) -> None:
        check_diffusers_version()
        cls = diffusers_class(pipe, SUPPORTED + tuple(REFUSED))
        if cls is None:
            raise TypeError(f"the HunyuanVideo adapter supports {', '.join(SUPPORTED)}; got {type(pipe).__name__}")
        if cls.__name__ in REFUSED:
            raise TypeError(f"surf_accel supports HunyuanVideoPipeline (text-to-video) of the HunyuanVideo family; "
                            f"{cls.__name__} is {REFUSED[cls.__name__]} and is not supported")
        transformer = getattr(pipe, "transformer", None)
        if transformer is None or type(transformer).__name__ != TRANSFORMER:
            raise TypeError(f"surf_accel needs the pipeline's transformer to be a {TRANSFORMER}; got "
                            f"{type(transformer).__name__}")
        if transformer.config.get("image_condition_type") is not None:
            raise TypeError(f"this {TRANSFORMER} is an image-to-video model (image_condition_type="
                            f"{transformer.config.image_condition_type!r}); surf_accel supports text-to-video only")
        self.scheduler_spec(pipe)  # raises TypeError for an unsupported scheduler

    def scheduler_spec(self, pipe) -> SchedulerSpec:
        return uniform_grid_scheduler_spec(pipe)

    def check_refiner(self, pipe, refiner) -> None:
        """Training-free refine only: ``None`` (the base transformer) or another
        ``HunyuanVideoTransformer3DModel`` reading the same latents and text."""
        if refiner is None:
            return
        if isinstance(refiner, Refiner) or type(refiner).__name__ != TRANSFORMER:
            raise TypeError(f"a HunyuanVideo pipeline takes refiner=None or a {TRANSFORMER} (training-free refine); "
                            f"trained surf_accel.Refiner checkpoints are Wan-family; got {type(refiner).__name__}")
        rc, bc = refiner.config, pipe.transformer.config
        for key in ("in_channels", "out_channels", "text_embed_dim", "pooled_projection_dim", "patch_size",
                    "patch_size_t", "image_condition_type"):
            if rc.get(key) != bc.get(key):
                raise ValueError(f"refiner transformer has {key}={rc.get(key)!r} but the pipeline's transformer has "
                                 f"{bc.get(key)!r}; a training-free refiner must share its interface")

    def family_spec(self, pipe) -> FamilySpec:
        cfg = pipe.transformer.config
        p = int(cfg.patch_size)
        return FamilySpec(self.family, int(pipe.vae_scale_factor_spatial), int(pipe.vae_scale_factor_temporal),
                          (int(cfg.patch_size_t), p, p), self.optimal_area)

    def cost_spec(self, transformer, text_len: int):
        return HunyuanVideoSpec.from_config(transformer.config, type(transformer).__name__, text_len)

    # ------------------------------------------------------------------ call preparation
    def check_call(self, pipe, a: dict) -> tuple:
        cb, cb_inputs = self.callback_and_inputs(a)
        pipe.check_inputs(a["prompt"], a["prompt_2"], a["height"], a["width"], a["prompt_embeds"], cb_inputs,
                          a["prompt_template"])
        needs = [("prompt_embeds", ("prompt_attention_mask", "pooled_prompt_embeds"))]
        if self._true_cfg(a):  # the pipeline ignores negative inputs otherwise
            needs.append(("negative_prompt_embeds", ("negative_prompt_attention_mask",)))
        for given, needed in needs:
            if a[given] is not None:
                missing = [n for n in needed if a[n] is None]
                if missing:
                    raise ValueError(f"`{given}` needs {' and '.join(f'`{n}`' for n in missing)} too "
                                     "(HunyuanVideo's transformer reads the text mask and the pooled CLIP text)")
        return cb, cb_inputs

    @staticmethod
    def _true_cfg(a: dict) -> bool:
        """As the pipeline: true CFG needs a scale > 1 and a negative prompt (text or both embeddings)."""
        has_neg = a["negative_prompt"] is not None or (a["negative_prompt_embeds"] is not None
                                                        and a["negative_pooled_prompt_embeds"] is not None)
        return a["true_cfg_scale"] > 1 and has_neg

    def encode_call(self, pipe, a: dict, n_prompts: int, nvp: int, device: torch.device) -> CallEncoding:
        batch = n_prompts * nvp
        tdtype = pipe.transformer.dtype

        def encode(prompt_, prompt_2, embeds, pooled, mask, what):
            if isinstance(prompt_, str) and n_prompts > 1:  # one negative prompt for every prompt
                prompt_ = [prompt_] * n_prompts
            if isinstance(prompt_2, str) and n_prompts > 1:
                prompt_2 = [prompt_2] * n_prompts
            out = pipe.encode_prompt(prompt=prompt_, prompt_2=prompt_2, prompt_template=a["prompt_template"],
                                     num_videos_per_prompt=nvp, prompt_embeds=embeds, pooled_prompt_embeds=pooled,
                                     prompt_attention_mask=mask, device=device,
                                     max_sequence_length=a["max_sequence_length"])
            return tuple(self._per_video(t, n_prompts, nvp, f"{what}[{i}]").to(device=device, dtype=tdtype)
                         for i, t in enumerate(out))

        pe, pooled, mask = encode(a["prompt"], a["prompt_2"], a["prompt_embeds"], a["pooled_prompt_embeds"],
                                  a["prompt_attention_mask"], "prompt")
        do_cfg = self._true_cfg(a)
        ne = neg_pooled = neg_mask = None
        if do_cfg:
            ne, neg_pooled, neg_mask = encode(a["negative_prompt"], a["negative_prompt_2"], a["negative_prompt_embeds"],
                                              a["negative_pooled_prompt_embeds"], a["negative_prompt_attention_mask"],
                                              "negative prompt")
        # the embedded guidance, exactly as the pipeline builds it
        guidance = torch.tensor([a["guidance_scale"]] * batch, dtype=tdtype, device=device) * 1000.0
        cfg_scale = float(a["true_cfg_scale"]) if do_cfg else 1.0
        request = Request(a["height"], a["width"], a["num_frames"], a["num_inference_steps"], cfg_scale)
        extra = dict(n_prompts=n_prompts, pooled=pooled, mask=mask, negative_pooled=neg_pooled,
                     negative_mask=neg_mask, guidance=guidance)
        return CallEncoding(request=request, guidance_scale=cfg_scale, do_cfg=do_cfg, prompt_embeds=pe,
                            negative_prompt_embeds=ne, extra=extra)

    @staticmethod
    def _per_video(t: torch.Tensor, n_prompts: int, nvp: int, what: str) -> torch.Tensor:
        """One row per video, each prompt's videos together (the order of the pipeline's own encoding).

        ``encode_prompt`` repeats what it computes but passes user-given tensors through unchanged.
        """
        if t.shape[0] == n_prompts * nvp:
            return t
        if t.shape[0] == n_prompts:
            return t.repeat_interleave(nvp, dim=0)
        raise ValueError(f"{what} has {t.shape[0]} rows; expected {n_prompts} (one per prompt) or "
                         f"{n_prompts * nvp} (one per video)")

    # ------------------------------------------------------------------ latents and the model
    def initial_latents(self, pipe, call: PreparedCall, stage) -> torch.Tensor:
        """The first stage's noise ``(B, C, T, H, W)``, drawn as the pipeline's ``prepare_latents`` does."""
        shape = (call.batch, int(pipe.transformer.config.in_channels)) + tuple(stage.latent_size)
        return noise_latents(call, shape, stage)

    def predict(self, pipe, model, latents, timestep, call: PreparedCall, ctx, *, negative: bool, step_index: int,
                sigma: float) -> torch.Tensor:
        """One transformer pass on ``latents`` ``(B, C, T, H, W)`` -> velocity of the same shape."""
        e = call.extra
        kwargs = dict(hidden_states=latents.to(model.dtype),
                      timestep=timestep.expand(latents.shape[0]).to(latents.dtype),
                      encoder_hidden_states=call.negative_prompt_embeds if negative else call.prompt_embeds,
                      encoder_attention_mask=e["negative_mask"] if negative else e["mask"],
                      pooled_projections=e["negative_pooled"] if negative else e["pooled"],
                      guidance=e["guidance"], attention_kwargs=call.attention_kwargs, return_dict=False)
        with self.branch(model, negative):
            return model(**kwargs)[0]

    def output(self, frames):
        return HunyuanVideoPipelineOutput(frames=frames)


__all__ = ["HUNYUAN_OPTIMAL_AREA", "HunyuanVideoAdapter"]


# ---------------------------------------------------------------------------- the family's declaration
def _targets(transformer) -> list:
    """Joint attention of the dual-stream, then the single-stream blocks (HunyuanVideo-1.5 has no single ones)."""
    return [block.attn for block in (*transformer.transformer_blocks,
                                     *getattr(transformer, "single_transformer_blocks", ()))]


def patch_sizes(transformer) -> tuple[int, int, int]:
    cfg = transformer.config
    return int(cfg.patch_size_t), int(cfg.patch_size), int(cfg.patch_size)


# HunyuanVideo 13B: the published transformer config, which is HunyuanVideoTransformer3DModel()'s
# defaults in diffusers (20 dual + 40 single blocks, 24 heads x 128, MLP ratio 4, patch (1, 2, 2)).
MODELS = {"hunyuanvideo": HunyuanVideoSpec("hunyuanvideo")}
# AutoencoderKLHunyuanVideo() default config (= HunyuanVideo's VAE, framewise encoding/decoding on as
# in diffusers), measure_vae(frames=(65, 129), size=(720, 1280)) on the meta device: 1778 / 3255
# MFLOP per pixel at 129 frames. Fitted at 720p: the mid-block attention over the latent grid adds a
# little per pixel as the size grows, so smaller sizes come out up to ~7% high (the VAE is ~1% of a
# HunyuanVideo 720p generation).
HUNYUAN_VAE = VaeSpec(enc_a=11.80e6, enc_b=13.80e6, dec_a=27.60e6, dec_b=25.22e6)
HUNYUAN_FAMILY = FamilySpec("hunyuanvideo", 8, 4, (1, 2, 2), HUNYUAN_OPTIMAL_AREA)
# HunyuanVideoPipeline: FlowMatchEulerDiscreteScheduler, shift 7.0, on the uniform grid it passes as sigmas
HUNYUAN_SCHEDULER = SchedulerSpec("euler", 7.0, grid="uniform")

FAMILY = Family(
    "hunyuanvideo",
    HunyuanVideoAdapter(),
    models=MODELS,
    # guidance-distilled: the pipeline's default call embeds guidance 6.0 and runs one pass per step
    defaults={"hunyuanvideo": FamilyDefaults(HUNYUAN_FAMILY, HUNYUAN_SCHEDULER, HUNYUAN_VAE, cfg=False,
                                             preset="hunyuan-paper", frames=129)},
    presets={
    # HunyuanVideo 720p, 129 frames (33 latent frames): the paper's schedule plus its temporal-only
    # refine windows (docs/design.md 1.3). W_t = 11 tiles the 33 latent frames into 3 whole windows (shifted
    # blocks: 6 + 11 + 11 + 5); the paper gives no W_t for HunyuanVideo and the window's effect on the
    # training-free refiner's quality is not measured yet. 1000 tokens = the whole H and W axes.
    "hunyuan-paper": (
        SurfConfig(reshift="paper", window=(11, 1000, 1000), name="hunyuan-paper"),
        "the paper's plan for HunyuanVideo 720p/129 frames (HunyuanVideoPipeline's default preset): 80% of the "
        "call's steps as the preview switching after 25% of them, factor 2, pixel handoff, refine for 20% of the "
        "call's steps with temporal windows of 11 latent frames (whole H and W)",
    ),
    },
    attention=(AttentionSpec(TRANSFORMER, _targets, patch_sizes, mask_text_sources, mask_text_lengths,
                             HunyuanVideoWindowAttnProcessor, HunyuanVideoSparseAttnProcessor,
                             ("HunyuanVideoAttnProcessor2_0",)),),
    # TeaCache4HunyuanVideo (ali-vilab/TeaCache at commit 7c10efc, teacache_sample_video.py)
    teacache={
    "hunyuanvideo": TeaCacheModel(TRANSFORMER, 16, (20, 3072), {
        "modulated_input": (7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00, 9.61237896e-02)},
        "modulated_input", (0.1, 0.15)),
    },
    teacache_indicators={TRANSFORMER: ("modulated_input",)},
)
