"""SURF adapter for diffusers' Wan pipelines: ``WanPipeline`` (T2V) and ``WanImageToVideoPipeline``
(I2V), for Wan2.1 and Wan2.2 (A14B two-expert T2V/I2V, TI2V-5B).

What is Wan-specific here: the transformer takes ``timestep`` in [0, 1000] and text embeddings
(plus CLIP image embeddings for Wan2.1 I2V); latents are normalised with the VAE's
``latents_mean``/``latents_std``; Wan2.1 I2V concatenates a first-frame mask and the image's latents
on the channel axis, which this adapter rebuilds at every stage's resolution through the pipeline's
own ``prepare_latents``.

Wan2.2 (docs/design.md 4):

- Two experts (A14B: ``transformer_2`` and ``boundary_ratio``): every step goes where the pipeline
  sends it, by its own timestep ``t`` at every stage and resolution: ``t >= boundary_ratio *
  num_train_timesteps`` to the high-noise ``transformer`` with ``guidance_scale``, else to the
  low-noise ``transformer_2`` with ``guidance_scale_2``. The training-free refine runs the expert
  ``SurfConfig.refine_expert`` names (default ``"low"``). Refused: an expert missing, a boundary
  outside (0, 1), experts of different interfaces.
- ``expand_timesteps`` (TI2V-5B, a 48-channel VAE with 16x spatial compression): per-token
  timesteps as the pipeline builds them, and for I2V the first latent frame replaced by the
  image's latents (timestep 0 on its tokens), rebuilt at every stage's resolution and put back
  before the handoff and the decode. Its optimal size is its published 720p, 1280x704. Refused: a
  patch other than (1, 2, 2) (the pipeline's per-token timesteps assume it) and a trained
  ``surf_accel.Refiner`` (trained on Wan2.1 latents, without the first-frame rule).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

from surf_accel.cost_model import FamilyDefaults, TransformerSpec, VaeSpec
from surf_accel.family import (AttentionSpec, CallEncoding, Family, FamilyAdapter, PreparedCall,
                               check_diffusers_version, diffusers_class, noise_latents)
from surf_accel.integrations.accelerators.sparse_attention import WanSparseAttnProcessor
from surf_accel.integrations.accelerators.surf_teacache import TeaCacheModel
from surf_accel.integrations.window_processors import WanWindowAttnProcessor, mask_text_lengths, mask_text_sources
from surf_accel.planner import FamilySpec, Request, SchedulerSpec
from surf_accel.refiner import Refiner, check_refiner_transformer
from surf_accel.schedulers import scheduler_spec

logger = logging.getLogger("surf_accel")

WAN_OPTIMAL_AREA = 480 * 832  # Wan2.1's training resolution (480p), the paper's optimal resolution
# Wan2.2 TI2V-5B's published 720p is 1280x704 (Wan-Video/Wan2.2: README "--task ti2v-5B --size 1280*704",
# SUPPORTED_SIZES['ti2v-5B'] = ('704*1280', '1280*704') in wan/configs/__init__.py). The A14B experts
# keep Wan2.1's 480p (both sizes are supported there, as for Wan2.1-14B, whose 480p the paper uses).
WAN22_TI2V_OPTIMAL_AREA = 704 * 1280
SUPPORTED = ("WanPipeline", "WanImageToVideoPipeline")
TRANSFORMER = "WanTransformer3DModel"


def boundary_timestep(pipe) -> Optional[float]:
    """Where the pipeline switches experts, ``boundary_ratio * num_train_timesteps`` (``None``: one model)."""
    ratio = pipe.config.get("boundary_ratio")
    if ratio is None:
        return None
    return ratio * pipe.scheduler.config.num_train_timesteps


def _interface(cfg) -> tuple:
    return tuple(tuple(v) if isinstance(v, (list, tuple)) else v
                 for v in (cfg.in_channels, cfg.out_channels, cfg.text_dim, cfg.patch_size, cfg.image_dim))


class WanAdapter(FamilyAdapter):
    family = "wan2.1"
    supported_pipelines = SUPPORTED

    def __init__(self, optimal_area: Optional[int] = None):
        self.optimal_area = optimal_area  # None: the pipeline's own (Wan2.1/A14B 480p, TI2V-5B 720p)

    @staticmethod
    def is_wan22(pipe) -> bool:
        """Two experts (A14B) or per-token timesteps (TI2V-5B)."""
        return pipe.config.get("boundary_ratio") is not None or bool(pipe.config.get("expand_timesteps"))

    @staticmethod
    def variant(pipe) -> str:
        if pipe.config.get("expand_timesteps"):
            return "wan2.2-ti2v"
        return "wan2.2-a14b" if pipe.config.get("boundary_ratio") is not None else "wan2.1"

    # ------------------------------------------------------------------ checks and geometry
    def check_pipeline(self, pipe) -> None:
        check_diffusers_version()
        if diffusers_class(pipe, SUPPORTED) is None:
            raise TypeError(f"the Wan adapter supports {', '.join(SUPPORTED)}; got {type(pipe).__name__}")
        ratio = pipe.config.get("boundary_ratio")
        high, low = getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)
        if ratio is not None:
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio < 1.0:
                raise TypeError(f"boundary_ratio must be in (0, 1) (Wan2.2 A14B: 0.875 T2V, 0.9 I2V), got {ratio!r}; "
                                "register the checkpoint's own value, or None for a single-model pipeline")
            # every SURF call, like every full diffusers call, starts at t ~ 1000 (high-noise expert) and
            # ends near 0 (low-noise expert): both experts run
            missing = [n for n, m in (("transformer (high-noise expert)", high),
                                      ("transformer_2 (low-noise expert)", low)) if m is None]
            if missing:
                raise TypeError(f"this Wan2.2 two-expert pipeline (boundary_ratio {ratio}) has no "
                                f"{' and no '.join(missing)}; its steps above and below the boundary need both: "
                                "load the pipeline with both experts")
            if _interface(high.config) != _interface(low.config):
                raise TypeError("Wan2.2 experts transformer and transformer_2 differ in in_channels, out_channels, "
                                "text_dim, patch_size or image_dim; both must read the same latents and embeddings")
        elif high is None:
            raise TypeError("surf_accel needs the pipeline's `transformer`; this pipeline has none (a Wan2.2 "
                            "transformer_2 alone runs only with a boundary_ratio and its high-noise expert)")
        if pipe.config.get("expand_timesteps") and tuple(high.config.patch_size) != (1, 2, 2):
            raise TypeError(f"expand_timesteps with patch size {tuple(high.config.patch_size)}: the pipeline builds "
                            "its per-token timesteps for patch (1, 2, 2) only, so SURF cannot keep them exact")
        scheduler_spec(pipe.scheduler)  # raises TypeError for an unsupported scheduler

    def check_refiner(self, pipe, refiner) -> None:
        """A trained ``surf_accel.Refiner`` or a ``WanTransformer3DModel`` fitting the pipeline's."""
        if refiner is None:
            return
        if isinstance(refiner, Refiner):
            if pipe.config.get("expand_timesteps"):
                raise TypeError("a trained surf_accel.Refiner is trained on Wan2.1 latents without the TI2V "
                                "first-frame rule; with an expand_timesteps (Wan2.2 TI2V-5B) pipeline use the "
                                "training-free refine (refiner=None)")
            refiner.check_compatible(pipe.transformer)
        else:
            check_refiner_transformer(refiner, pipe.transformer)

    def is_i2v(self, pipe) -> bool:
        return diffusers_class(pipe, SUPPORTED).__name__ == "WanImageToVideoPipeline"

    def video_fps(self, pipe) -> int:
        return 24 if pipe.config.get("expand_timesteps") else self.fps  # TI2V-5B: 24 fps (sample_fps)

    def family_spec(self, pipe) -> FamilySpec:
        cfg = pipe.transformer.config
        area = self.optimal_area
        if area is None:
            area = WAN22_TI2V_OPTIMAL_AREA if pipe.config.get("expand_timesteps") else WAN_OPTIMAL_AREA
        return FamilySpec(self.variant(pipe), int(pipe.vae_scale_factor_spatial), int(pipe.vae_scale_factor_temporal),
                          tuple(int(p) for p in cfg.patch_size), area, rope_max_seq_len=int(cfg.rope_max_seq_len))

    def cost_spec(self, transformer, text_len: int):
        return TransformerSpec.from_config(transformer.config, type(transformer).__name__, text_len)

    # ------------------------------------------------------------------ call preparation
    def check_call(self, pipe, a: dict) -> tuple:
        cb, cb_inputs = self.callback_and_inputs(a)
        if self.is_i2v(pipe):
            pipe.check_inputs(a["prompt"], a["negative_prompt"], a["image"], a["height"], a["width"],
                              a["prompt_embeds"], a["negative_prompt_embeds"], a["image_embeds"], cb_inputs,
                              a["guidance_scale_2"])
        else:
            pipe.check_inputs(a["prompt"], a["negative_prompt"], a["height"], a["width"], a["prompt_embeds"],
                              a["negative_prompt_embeds"], cb_inputs, a["guidance_scale_2"])
        return cb, cb_inputs

    def start_call(self, pipe, a: dict) -> None:
        super().start_call(pipe, a)
        guidance_2 = a["guidance_scale_2"]
        if pipe.config.get("boundary_ratio") is not None and guidance_2 is None:
            guidance_2 = a["guidance_scale"]  # as the pipeline does
        pipe._guidance_scale_2 = guidance_2

    @staticmethod
    def _num_frames(pipe, num_frames: int) -> int:
        """The frame count the pipeline runs (rounded to ``k * vae_scale_factor_temporal + 1``)."""
        vt = pipe.vae_scale_factor_temporal
        return max(num_frames if num_frames % vt == 1 else num_frames // vt * vt + 1, 1)

    def call_request(self, pipe, a: dict) -> Request:
        return Request(a["height"], a["width"], self._num_frames(pipe, a["num_frames"]), a["num_inference_steps"],
                       a["guidance_scale"])

    def encode_call(self, pipe, a: dict, n_prompts: int, nvp: int, device: torch.device) -> CallEncoding:
        if a["num_frames"] % pipe.vae_scale_factor_temporal != 1:
            logger.warning("`num_frames - 1` has to be divisible by %d. Rounding to the nearest number.",
                           pipe.vae_scale_factor_temporal)
        num_frames = self._num_frames(pipe, a["num_frames"])
        guidance = a["guidance_scale"]
        do_cfg = guidance > 1.0
        pe, ne = pipe.encode_prompt(prompt=a["prompt"], negative_prompt=a["negative_prompt"],
                                    do_classifier_free_guidance=do_cfg, num_videos_per_prompt=nvp,
                                    prompt_embeds=a["prompt_embeds"],
                                    negative_prompt_embeds=a["negative_prompt_embeds"],
                                    max_sequence_length=a["max_sequence_length"], device=device)
        tdtype = pipe.transformer.dtype
        batch = n_prompts * nvp
        # user-given embeddings are not repeated per video by encode_prompt; the transformer needs one
        # row per video (the order of `_get_t5_prompt_embeds`: each prompt's videos together)
        pe = pe.repeat_interleave(nvp, dim=0) if pe.shape[0] == n_prompts and nvp > 1 else pe
        if ne is not None and ne.shape[0] == n_prompts and nvp > 1:
            ne = ne.repeat_interleave(nvp, dim=0)
        pe = pe.to(tdtype)
        if ne is not None:
            ne = ne.to(tdtype)
        extra = {"n_prompts": n_prompts, "guidance_scale_2": pipe._guidance_scale_2}
        if self.is_i2v(pipe):
            image_embeds = a["image_embeds"]
            if pipe.transformer.config.image_dim is not None:
                if image_embeds is None:
                    image_embeds = pipe.encode_image(a["image"] if a["last_image"] is None
                                                     else [a["image"], a["last_image"]], device)
                # the pipeline repeats by the prompt count; the transformer needs one row per video
                image_embeds = image_embeds.repeat(n_prompts, 1, 1)
                if nvp > 1 and image_embeds.shape[0] != batch:
                    image_embeds = image_embeds.repeat_interleave(nvp, dim=0)
                image_embeds = image_embeds.to(tdtype)
            extra.update(image=a["image"], last_image=a["last_image"], image_embeds=image_embeds)
        request = Request(a["height"], a["width"], num_frames, a["num_inference_steps"], guidance)
        return CallEncoding(request=request, guidance_scale=guidance, do_cfg=do_cfg, prompt_embeds=pe,
                            negative_prompt_embeds=ne, extra=extra)

    # ------------------------------------------------------------------ latents and conditioning
    def _shape(self, pipe, call, stage):
        # the pipelines' own channel counts: T2V the transformer's input, I2V the VAE's latents
        c = pipe.vae.config.z_dim if self.is_i2v(pipe) else pipe.transformer.config.in_channels
        return (call.batch, c) + tuple(stage.latent_size)

    def initial_latents(self, pipe, call: PreparedCall, stage) -> torch.Tensor:
        """The first stage's noise, drawn exactly as the pipeline draws it (same generator use)."""
        return noise_latents(call, self._shape(pipe, call, stage), stage)

    def stage_context(self, pipe, call: PreparedCall, stage):
        """The conditioning at this stage's resolution (the pipeline's own recipe):

        - Wan2.1 I2V: mask + image latents ``(B, 4 + C, T, h, w)``, concatenated to the latents;
        - ``expand_timesteps`` I2V: ``(condition (B, C, 1, h, w), first_frame_mask (1, 1, T, h, w))``;
        - ``expand_timesteps`` T2V: ``(None, ones (1, 1, T, h, w))`` (every token at the step's timestep);
        - Wan2.1/A14B T2V: ``None``.
        """
        expand = pipe.config.get("expand_timesteps")
        if not self.is_i2v(pipe):
            if not expand:
                return None
            return None, torch.ones((1, 1) + tuple(stage.latent_size), dtype=torch.float32, device=call.device)
        h, w = stage.height, stage.width
        image = pipe.video_processor.preprocess(call.extra["image"], height=h, width=w).to(call.device,
                                                                                           dtype=torch.float32)
        last = call.extra["last_image"]
        if last is not None:
            last = pipe.video_processor.preprocess(last, height=h, width=w).to(call.device, dtype=torch.float32)
        placeholder = torch.zeros(self._shape(pipe, call, stage), device=call.device)  # no generator draw
        out = pipe.prepare_latents(image, call.batch, pipe.vae.config.z_dim, h, w, call.request.num_frames,
                                   torch.float32, call.device, call.generator, placeholder, last)
        return tuple(out[1:]) if expand else out[1]

    def stage_models(self, pipe, call: PreparedCall, stage, model, config) -> tuple:
        if stage.model != "base" or boundary_timestep(pipe) is None:
            return (model,)
        if stage.name == "refine" and config.refine_expert != "route":
            return (pipe.transformer_2 if config.refine_expert == "low" else pipe.transformer,)
        return (pipe.transformer, pipe.transformer_2)

    def step_model(self, pipe, call: PreparedCall, stage, model, timestep, guidance: float, config):
        """Wan2.2 A14B: the expert the pipeline would run at ``timestep`` (the refine: the configured
        one), with its guidance scale unless the stage sets its own (``refine_guidance``)."""
        boundary = boundary_timestep(pipe)
        if stage.model != "base" or boundary is None:
            return model, guidance
        which = config.refine_expert if stage.name == "refine" else "route"
        if which == "route":
            which = "high" if timestep >= boundary else "low"  # the pipeline's comparison
        expert = pipe.transformer if which == "high" else pipe.transformer_2
        if expert is None:
            raise TypeError(f"the Wan2.2 {which}-noise expert is missing at timestep {float(timestep):g}; load the "
                            "pipeline with both transformer and transformer_2")
        if stage.guidance is not None:
            return expert, guidance
        return expert, call.guidance_scale if which == "high" else call.extra["guidance_scale_2"]

    def predict(self, pipe, model, latents, timestep, call: PreparedCall, ctx, *, negative: bool, step_index: int,
                sigma: float) -> torch.Tensor:
        dtype = model.dtype
        in_ch = model.config.in_channels
        t = timestep.expand(latents.shape[0])
        if pipe.config.get("expand_timesteps"):
            condition, mask = ctx
            # the pipeline's per-token timesteps (patch (1, 2, 2)): 0 on the I2V first frame's tokens
            t = (mask[0][0][:, ::2, ::2] * timestep).flatten().unsqueeze(0).expand(latents.shape[0], -1)
            x = latents if condition is None else (1 - mask) * condition + mask * latents
        else:
            # the I2V condition goes in only where the model reads it (a trained refiner may not)
            x = latents if ctx is None or in_ch == latents.shape[1] else torch.cat([latents, ctx], dim=1)
        if x.shape[1] != in_ch:
            raise ValueError(f"{type(model).__name__} expects {in_ch} input channels, got {x.shape[1]} "
                             f"({'latents + I2V condition' if ctx is not None else 'latents'})")
        # the text (and image) states in the model's dtype: a refiner may run in another dtype than the pipeline
        text = call.negative_prompt_embeds if negative else call.prompt_embeds
        kwargs = dict(hidden_states=x.to(dtype), timestep=t, encoder_hidden_states=text.to(dtype),
                      attention_kwargs=call.attention_kwargs, return_dict=False)
        if self.is_i2v(pipe) and getattr(model.config, "image_dim", None) is not None:
            kwargs["encoder_hidden_states_image"] = call.extra["image_embeds"].to(dtype)
        with self.branch(model, negative):
            return model(**kwargs)[0]

    def finalize(self, pipe, latents: torch.Tensor, call: PreparedCall, ctx) -> torch.Tensor:
        """``expand_timesteps`` I2V: the image's latents in the first frame, as the pipeline ends."""
        if pipe.config.get("expand_timesteps") and ctx[0] is not None:
            condition, mask = ctx
            return (1 - mask) * condition + mask * latents
        return latents

    # ------------------------------------------------------------------ VAE
    def _stats(self, pipe, device, dtype):
        cfg = pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(device, dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(device, dtype)
        return mean, inv_std

    def decode(self, pipe, latents: torch.Tensor) -> torch.Tensor:
        latents = self.to_vae(pipe, latents)
        mean, inv_std = self._stats(pipe, latents.device, latents.dtype)
        return pipe.vae.decode(latents / inv_std + mean, return_dict=False)[0]

    def encode(self, pipe, video: torch.Tensor) -> torch.Tensor:
        z = pipe.vae.encode(self.to_vae(pipe, video)).latent_dist.mode().to(torch.float32)
        mean, inv_std = self._stats(pipe, z.device, z.dtype)
        return (z - mean) * inv_std

    def output(self, frames):
        return WanPipelineOutput(frames=frames)


# ---------------------------------------------------------------------------- the family's declaration
def _targets(transformer) -> list:
    return [block.attn1 for block in transformer.blocks]


def _patch_sizes(transformer) -> tuple[int, int, int]:
    return tuple(int(p) for p in transformer.config.patch_size)


# Published Wan2.1 configs (Wan-AI/Wan2.1-T2V-{14B,1.3B}-Diffusers transformer/config.json).
MODELS = {
    "wan2.1-14b": TransformerSpec("wan2.1-14b", dim=5120, ffn_dim=13824, num_layers=40, num_heads=40),
    "wan2.1-1.3b": TransformerSpec("wan2.1-1.3b", dim=1536, ffn_dim=8960, num_layers=30, num_heads=12),
    # Wan2.2 A14B (Wan-AI/Wan2.2-T2V-A14B-Diffusers transformer/ and transformer_2/config.json): two
    # experts of Wan2.1-14B's shape; a step runs one of them (the boundary picks which), so a step costs
    # one 14B forward. The I2V experts read 36 input channels (latents + mask + image latents).
    "wan2.2-a14b": TransformerSpec("wan2.2-a14b", dim=5120, ffn_dim=13824, num_layers=40, num_heads=40,
                                   family="wan2.2-a14b"),
    # Wan2.2 TI2V-5B: diffusers' scripts/convert_wan_to_diffusers.py "Wan2.2-TI2V-5B" (= the published
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer config): 24 heads x 128, ffn 14336, 30 layers, 48 channels
    "wan2.2-ti2v-5b": TransformerSpec("wan2.2-ti2v-5b", dim=3072, ffn_dim=14336, num_layers=30, num_heads=24,
                                      in_channels=48, out_channels=48, family="wan2.2-ti2v"),
}
# AutoencoderKLWan() default config (= Wan2.1's VAE), measured with measure_vae() on the meta device
# (5 and 9 frames at 64x64 px): encode 5.33 / 5.19 MFLOP per pixel, decode 8.91 / 8.70.
WAN_VAE = VaeSpec(enc_a=6.66e6, enc_b=5.00e6, dec_a=10.75e6, dec_b=8.45e6)
WAN_FAMILY = FamilySpec("wan2.1", 8, 4, (1, 2, 2), WAN_OPTIMAL_AREA)
WAN_SCHEDULER = SchedulerSpec("unipc", 5.0)  # diffusers' Wan example: UniPC, flow_shift 5.0 at 720p
# Wan2.2's VAE (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json: base_dim 160, decoder_base_dim 256,
# z_dim 48, residual blocks, its own 2x2 patch, 16x spatial / 4x temporal), measure_vae() on the meta
# device (5 and 9 frames at 64x64 px): encode 18.6 / 32.6 MFLOP per pixel, decode 96.4 / 169.9.
WAN22_VAE = VaeSpec(enc_a=4.64e6, enc_b=3.49e6, dec_a=22.78e6, dec_b=18.39e6, spatial=16, temporal=4)
WAN22_TI2V_FAMILY = FamilySpec("wan2.2-ti2v", 16, 4, (1, 2, 2), WAN22_TI2V_OPTIMAL_AREA)
# The A14B experts keep Wan2.1's VAE and 480p optimal size. Flow shifts do not change FLOP counts.
WAN22_A14B_FAMILY = FamilySpec("wan2.2-a14b", 8, 4, (1, 2, 2), WAN_OPTIMAL_AREA)

FAMILY = Family(
    "wan",
    WanAdapter(),
    models=MODELS,
    # Wan2.2: 81 frames at 16 fps for A14B, 121 at 24 fps for TI2V-5B (the published generate defaults)
    defaults={
        "wan2.1": FamilyDefaults(WAN_FAMILY, WAN_SCHEDULER, WAN_VAE, cfg=True, preset="paper", frames=81),
        "wan2.2-a14b": FamilyDefaults(WAN22_A14B_FAMILY, WAN_SCHEDULER, WAN_VAE, cfg=True, preset="paper", frames=81),
        "wan2.2-ti2v": FamilyDefaults(WAN22_TI2V_FAMILY, WAN_SCHEDULER, WAN22_VAE, cfg=True, preset="paper",
                                      frames=121),
    },
    attention=(AttentionSpec(TRANSFORMER, _targets, _patch_sizes, mask_text_sources, mask_text_lengths,
                             WanWindowAttnProcessor, WanSparseAttnProcessor, ("WanAttnProcessor",)),),
    # TeaCache4Wan2.1 (ali-vilab/TeaCache at commit 7c10efc, teacache_generate.py): rescale polynomials per
    # checkpoint and indicator, highest power first; the READMEs' thresholds
    teacache={
    "wan2.1-t2v-1.3b": TeaCacheModel(TRANSFORMER, 16, (30, 1536), {
        "temb": (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01),
        "timestep_proj": (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02)},
        "temb", (0.05, 0.07, 0.08)),
    "wan2.1-t2v-14b": TeaCacheModel(TRANSFORMER, 16, (40, 5120), {
        "temb": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
        "timestep_proj": (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01)},
        "timestep_proj", (0.14, 0.15, 0.2)),
    "wan2.1-i2v-14b-480p": TeaCacheModel(TRANSFORMER, 36, (40, 5120), {
        "temb": (-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01),
        "timestep_proj": (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01)},
        "timestep_proj", (0.13, 0.19, 0.26)),
    "wan2.1-i2v-14b-720p": TeaCacheModel(TRANSFORMER, 36, (40, 5120), {
        "temb": (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
        "timestep_proj": (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02)},
        "timestep_proj", (0.18, 0.2, 0.3)),
    },
    teacache_indicators={TRANSFORMER: ("temb", "timestep_proj")},
)
