"""SURF adapter for diffusers' Wan2.1 pipelines: ``WanPipeline`` (T2V) and
``WanImageToVideoPipeline`` (I2V).

What is Wan-specific here: the transformer takes ``timestep`` in [0, 1000] and text embeddings
(plus CLIP image embeddings for Wan2.1 I2V); latents are normalised with the VAE's
``latents_mean``/``latents_std``; I2V concatenates a first-frame mask and the image's latents on the
channel axis, which this adapter rebuilds at every stage's resolution through the pipeline's own
``prepare_latents``. Wan2.2 features (``transformer_2``/``boundary_ratio``, ``expand_timesteps``)
are refused.
"""

from __future__ import annotations

import logging

import torch

from surf_accel.integrations.base import (FamilyAdapter, PreparedCall, check_diffusers_version, diffusers_class,
                                          noise_latents, scheduler_spec)
from surf_accel.planner import FamilySpec, Request

logger = logging.getLogger("surf_accel")

WAN_OPTIMAL_AREA = 480 * 832  # Wan2.1's training resolution (480p), the paper's optimal resolution
SUPPORTED = ("WanPipeline", "WanImageToVideoPipeline")


class WanAdapter(FamilyAdapter):
    family = "wan2.1"
    supported_pipelines = SUPPORTED

    def __init__(self, optimal_area: int = WAN_OPTIMAL_AREA):
        self.optimal_area = optimal_area

    # ------------------------------------------------------------------ checks and geometry
    def check_pipeline(self, pipe) -> None:
        check_diffusers_version()
        if diffusers_class(pipe, SUPPORTED) is None:
            raise TypeError(f"the Wan adapter supports {', '.join(SUPPORTED)}; got {type(pipe).__name__}")
        if getattr(pipe, "transformer", None) is None:
            raise TypeError("surf_accel needs the pipeline's `transformer` (Wan2.1); this pipeline has none")
        if getattr(pipe, "transformer_2", None) is not None or pipe.config.get("boundary_ratio") is not None:
            raise TypeError("surf_accel supports Wan2.1 pipelines; two-expert Wan2.2 pipelines "
                            "(transformer_2 / boundary_ratio) are not supported")
        if pipe.config.get("expand_timesteps"):
            raise TypeError("surf_accel supports Wan2.1 pipelines; Wan2.2 expand_timesteps is not supported")
        scheduler_spec(pipe.scheduler)  # raises TypeError for an unsupported scheduler

    def check_refiner(self, pipe, refiner) -> None:
        """A trained ``surf_accel.Refiner`` or a ``WanTransformer3DModel`` fitting the pipeline's."""
        from surf_accel.refiner import Refiner, check_refiner_transformer

        if refiner is None:
            return
        if isinstance(refiner, Refiner):
            refiner.check_compatible(pipe.transformer)
        else:
            check_refiner_transformer(refiner, pipe.transformer)

    def is_i2v(self, pipe) -> bool:
        return diffusers_class(pipe, SUPPORTED).__name__ == "WanImageToVideoPipeline"

    def family_spec(self, pipe) -> FamilySpec:
        cfg = pipe.transformer.config
        return FamilySpec(self.family, int(pipe.vae_scale_factor_spatial), int(pipe.vae_scale_factor_temporal),
                          tuple(int(p) for p in cfg.patch_size), self.optimal_area,
                          rope_max_seq_len=int(cfg.rope_max_seq_len))

    def cost_spec(self, transformer, text_len: int):
        from surf_accel.cost_model import TransformerSpec

        return TransformerSpec.from_config(transformer.config, type(transformer).__name__, text_len)

    # ------------------------------------------------------------------ call preparation
    def prepare_call(self, pipe, original_call, args, kwargs) -> PreparedCall:
        a = self.bind_call(pipe, original_call, args, kwargs)
        i2v = self.is_i2v(pipe)
        cb, cb_inputs = self.callback_and_inputs(a)
        if i2v:
            pipe.check_inputs(a["prompt"], a["negative_prompt"], a["image"], a["height"], a["width"],
                              a["prompt_embeds"], a["negative_prompt_embeds"], a["image_embeds"], cb_inputs,
                              a["guidance_scale_2"])
        else:
            pipe.check_inputs(a["prompt"], a["negative_prompt"], a["height"], a["width"], a["prompt_embeds"],
                              a["negative_prompt_embeds"], cb_inputs, a["guidance_scale_2"])
        nvp = self.videos_per_prompt(a)
        num_frames = a["num_frames"]
        vt = pipe.vae_scale_factor_temporal
        if num_frames % vt != 1:
            logger.warning("`num_frames - 1` has to be divisible by %d. Rounding to the nearest number.", vt)
            num_frames = num_frames // vt * vt + 1
        num_frames = max(num_frames, 1)
        steps = a["num_inference_steps"]
        guidance = a["guidance_scale"]
        do_cfg = guidance > 1.0
        self.start_call(pipe, guidance, a["attention_kwargs"])
        pipe._guidance_scale_2 = None
        device = pipe._execution_device
        prompt = a["prompt"]
        n_prompts = self.prompt_count(prompt, a["prompt_embeds"])
        pe, ne = pipe.encode_prompt(prompt=prompt, negative_prompt=a["negative_prompt"], do_classifier_free_guidance=do_cfg,
                                    num_videos_per_prompt=nvp, prompt_embeds=a["prompt_embeds"],
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
        extra = {"n_prompts": n_prompts}
        if i2v:
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
        request = Request(a["height"], a["width"], num_frames, steps, guidance)
        return PreparedCall(request=request, batch=batch, guidance_scale=guidance, do_cfg=do_cfg, prompt_embeds=pe,
                            negative_prompt_embeds=ne, generator=a["generator"], latents=a["latents"],
                            output_type=a["output_type"], return_dict=a["return_dict"],
                            attention_kwargs=a["attention_kwargs"], callback=cb, callback_inputs=cb_inputs,
                            device=device, extra=extra)

    # ------------------------------------------------------------------ latents and conditioning
    def _shape(self, pipe, call, stage):
        c = pipe.vae.config.z_dim
        return (call.batch, c) + tuple(stage.latent_size)

    def initial_latents(self, pipe, call: PreparedCall, stage) -> torch.Tensor:
        """The first stage's noise, drawn exactly as the pipeline draws it (same generator use)."""
        return noise_latents(call, self._shape(pipe, call, stage), stage)

    def stage_context(self, pipe, call: PreparedCall, stage):
        """I2V: mask + image latents at this stage's resolution (the pipeline's own recipe)."""
        if not self.is_i2v(pipe):
            return None
        h, w = stage.height, stage.width
        image = pipe.video_processor.preprocess(call.extra["image"], height=h, width=w).to(call.device,
                                                                                           dtype=torch.float32)
        last = call.extra["last_image"]
        if last is not None:
            last = pipe.video_processor.preprocess(last, height=h, width=w).to(call.device, dtype=torch.float32)
        placeholder = torch.zeros(self._shape(pipe, call, stage), device=call.device)  # no generator draw
        _, condition = pipe.prepare_latents(image, call.batch, pipe.vae.config.z_dim, h, w, call.request.num_frames,
                                            torch.float32, call.device, call.generator, placeholder, last)
        return condition

    def predict(self, pipe, model, latents, timestep, call: PreparedCall, ctx, *, negative: bool, step_index: int,
                sigma: float) -> torch.Tensor:
        dtype = model.dtype
        in_ch = model.config.in_channels
        # the I2V condition goes in only where the model reads it (a trained refiner may not)
        x = latents if ctx is None or in_ch == latents.shape[1] else torch.cat([latents, ctx], dim=1)
        if x.shape[1] != in_ch:
            raise ValueError(f"{type(model).__name__} expects {in_ch} input channels, got {x.shape[1]} "
                             f"({'latents + I2V condition' if ctx is not None else 'latents'})")
        kwargs = dict(hidden_states=x.to(dtype), timestep=timestep.expand(latents.shape[0]),
                      encoder_hidden_states=call.negative_prompt_embeds if negative else call.prompt_embeds,
                      attention_kwargs=call.attention_kwargs, return_dict=False)
        if self.is_i2v(pipe) and getattr(model.config, "image_dim", None) is not None:
            kwargs["encoder_hidden_states_image"] = call.extra["image_embeds"]
        with self.branch(model, negative):
            return model(**kwargs)[0]

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
        from diffusers.pipelines.wan.pipeline_output import WanPipelineOutput

        return WanPipelineOutput(frames=frames)
