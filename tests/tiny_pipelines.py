"""Tiny random-weight Wan pipelines built in process (no hub download, no weights on disk).

Sizes follow the spirit of diffusers' own fast tests: a 3-channel-base AutoencoderKLWan
(8x spatial, 4x temporal), a 2-layer WanTransformer3DModel with patch (1, 2, 2), a 2-layer UMT5
encoder, and a word-level tokenizer built with the `tokenizers` library.
"""

from __future__ import annotations

import torch

VOCAB = ["<pad>", "</s>", "<unk>", "a", "red", "blue", "green", "circle", "square", "moving", "left",
         "right", "up", "down", "on", "the", "background", "ugly", "blurry", "cat", "dog", "video"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_text_encoder(d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(0)
    cfg = UMT5Config(vocab_size=len(VOCAB), d_model=d_model, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return UMT5EncoderModel(cfg).eval()


def tiny_vae():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def tiny_transformer(in_channels: int = 16, image_dim: int | None = None, num_layers: int = 2,
                     heads: int = 2, head_dim: int = 12, ffn_dim: int = 32, text_dim: int = 32, seed: int = 0,
                     out_channels: int = 16):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=in_channels,
        out_channels=out_channels, text_dim=text_dim, freq_dim=32, ffn_dim=ffn_dim, num_layers=num_layers,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=64, image_dim=image_dim,
    ).eval()


def scheduler(kind: str = "euler", shift: float = 3.0):
    if kind == "euler":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(shift=shift)
    if kind == "unipc":
        from diffusers import UniPCMultistepScheduler

        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=shift, num_train_timesteps=1000)
    raise ValueError(kind)


def tiny_wan_t2v(kind: str = "euler", shift: float = 3.0, **transformer_kwargs):
    """A WanPipeline (T2V) with random weights; runs 16x16 px, 5 frames in milliseconds."""
    from diffusers import WanPipeline

    pipe = WanPipeline(tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(), vae=tiny_vae(),
                       scheduler=scheduler(kind, shift), transformer=tiny_transformer(**transformer_kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=4, projection_dim=4, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, intermediate_size=16, patch_size=1)
    return CLIPVisionModelWithProjection(cfg).eval(), CLIPImageProcessor(crop_size=32, size=32)


def tiny_wan_i2v(kind: str = "euler", shift: float = 3.0):
    """A WanImageToVideoPipeline (Wan2.1 style: CLIP image embeddings + 36-channel transformer input)."""
    from diffusers import WanImageToVideoPipeline

    enc, proc = tiny_image_encoder()
    pipe = WanImageToVideoPipeline(
        tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(), vae=tiny_vae(),
        scheduler=scheduler(kind, shift), transformer=tiny_transformer(in_channels=36, image_dim=4),
        image_encoder=enc, image_processor=proc)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_image(height: int = 32, width: int = 32, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def gen(seed: int = 0):
    return torch.Generator().manual_seed(seed)


T2V_KW = dict(prompt="a red circle moving left", negative_prompt="ugly blurry", height=32, width=32, num_frames=5,
              num_inference_steps=4, guidance_scale=4.0, max_sequence_length=16, output_type="np")


def i2v_kwargs(batch: int = 1, seed: int = 0, **overrides):
    """I2V call arguments with precomputed text embeddings: diffusers 0.42's I2V text cleaning needs
    `ftfy`, which is not installed here (WanPipeline guards it, WanImageToVideoPipeline does not)."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(image=tiny_image(), prompt_embeds=torch.randn(batch, 16, 32, generator=g),
              negative_prompt_embeds=torch.randn(batch, 16, 32, generator=g), height=32, width=32, num_frames=5,
              num_inference_steps=4, guidance_scale=4.0, max_sequence_length=16, output_type="np")
    kw.update(overrides)
    return kw


# ---------------------------------------------------------------------------- Wan2.2
def tiny_wan22_vae():
    """A Wan2.2-style AutoencoderKLWan: 48 latent channels, residual blocks, the VAE's own 2x2 patch,
    16x spatial / 4x temporal (TI2V-5B's layout), random latent statistics."""
    from diffusers import AutoencoderKLWan

    g = torch.Generator().manual_seed(1)
    mean = (torch.randn(48, generator=g) * 0.5).tolist()
    std = (torch.rand(48, generator=g) + 0.5).tolist()
    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=8, z_dim=48, dim_mult=[1, 1, 1, 1], num_res_blocks=1, is_residual=True,
                            in_channels=12, out_channels=12, patch_size=2, scale_factor_spatial=16,
                            temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std).eval()


def tiny_wan22_a14b(i2v: bool = False, kind: str = "euler", shift: float = 3.0, boundary_ratio: float = 0.875):
    """A two-expert Wan2.2 A14B-style pipeline: ``transformer`` (high-noise expert, seed 0) and
    ``transformer_2`` (low-noise expert, seed 1) with ``boundary_ratio``; I2V without CLIP image
    embeddings (36-channel input: latents, mask, image latents), as Wan2.2 I2V has none."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    c = 36 if i2v else 16
    parts = dict(tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(), vae=tiny_vae(),
                 scheduler=scheduler(kind, shift), transformer=tiny_transformer(in_channels=c, seed=0),
                 transformer_2=tiny_transformer(in_channels=c, seed=1), boundary_ratio=boundary_ratio)
    pipe = WanImageToVideoPipeline(**parts) if i2v else WanPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan22_ti2v(i2v: bool = False, kind: str = "euler", shift: float = 3.0):
    """A Wan2.2 TI2V-5B-style pipeline (``expand_timesteps=True``, one 48-channel transformer, the
    48-channel 16x VAE); ``i2v=True`` is the WanImageToVideoPipeline form (first-frame conditioning)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    parts = dict(tokenizer=tiny_tokenizer(), text_encoder=tiny_text_encoder(), vae=tiny_wan22_vae(),
                 scheduler=scheduler(kind, shift), transformer=tiny_transformer(in_channels=48, out_channels=48),
                 expand_timesteps=True)
    pipe = WanImageToVideoPipeline(**parts) if i2v else WanPipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------- HunyuanVideo
# Configs in the spirit of diffusers' own HunyuanVideo fast tests, with the real model's spatial
# patch 2 (so pixel sizes sit on the 16-pixel grid as they do for the 13B model).
HY_TEXT_LEN = 8  # max_sequence_length of the calls below (Llama tokens after the template crop)


def tiny_llama():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, pad_token_id=0, bos_token_id=1, eos_token_id=1,
                      max_position_embeddings=256)
    return LlamaModel(cfg).eval()


def tiny_clip_text():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=len(VOCAB), hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, projection_dim=8, pad_token_id=0,
                         bos_token_id=1, eos_token_id=1)
    return CLIPTextModel(cfg).eval()


def tiny_hunyuan_vae():
    from diffusers import AutoencoderKLHunyuanVideo

    torch.manual_seed(0)
    return AutoencoderKLHunyuanVideo(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                     norm_num_groups=4, spatial_compression_ratio=8,
                                     temporal_compression_ratio=4).eval()


def tiny_hunyuan_transformer(seed: int = 0, **overrides):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    cfg = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
               num_single_layers=2, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
               text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4))
    cfg.update(overrides)
    return HunyuanVideoTransformer3DModel(**cfg).eval()


def tiny_hunyuan_t2v(shift: float = 7.0):
    """A HunyuanVideoPipeline (T2V) with random weights (tiny Llama + CLIP text encoders, word-level
    tokenizers); 32x32 px, 5 frames runs in well under a second."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline

    pipe = HunyuanVideoPipeline(text_encoder=tiny_llama(), tokenizer=tiny_tokenizer(),
                                transformer=tiny_hunyuan_transformer(), vae=tiny_hunyuan_vae(),
                                scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                                text_encoder_2=tiny_clip_text(), tokenizer_2=tiny_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe


HY_KW = dict(prompt="a red circle moving left", height=32, width=32, num_frames=5, num_inference_steps=4,
             guidance_scale=6.0, max_sequence_length=HY_TEXT_LEN, output_type="np")


def hunyuan_embeds(batch: int = 1, seed: int = 0, valid: int = 5, negative: bool = False) -> dict:
    """Precomputed conditioning for the tiny HunyuanVideo transformer: Llama states ``(B, L, 16)``,
    a right-padded mask ``(B, L)`` with ``valid`` ones, CLIP pooled ``(B, 8)``."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, HY_TEXT_LEN, dtype=torch.long)
    mask[:, :valid] = 1
    prefix = "negative_" if negative else ""
    return {f"{prefix}prompt_embeds": torch.randn(batch, HY_TEXT_LEN, 16, generator=g),
            f"{prefix}prompt_attention_mask": mask,
            f"{prefix}pooled_prompt_embeds": torch.randn(batch, 8, generator=g)}


# ---------------------------------------------------------------------------- HunyuanVideo-1.5
# Shapes in the spirit of diffusers' own HunyuanVideo-1.5 fast tests: a 16x-spatial / 4x-temporal
# AutoencoderKLHunyuanVideo15 with 4 latent channels, a 2-block HunyuanVideo15Transformer3DModel with the
# real model's patch 1 (sizes on the 16-pixel grid), a tiny SigLIP for I2V. No text encoders: the calls
# pass the Qwen2.5-VL (16-d) and ByT5 (8-d) states with their masks (hv15_embeds).
HV15_TEXT_LEN, HV15_TEXT2_LEN = 8, 4


def tiny_hv15_vae():
    from diffusers import AutoencoderKLHunyuanVideo15

    torch.manual_seed(0)
    return AutoencoderKLHunyuanVideo15(latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
                                       spatial_compression_ratio=16, temporal_compression_ratio=4).eval()


def tiny_hv15_transformer(seed: int = 0, **overrides):
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    cfg = dict(in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
               num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
               text_embed_2_dim=8, image_embed_dim=8, rope_axes_dim=(2, 2, 4), target_size=64)
    cfg.update(overrides)
    return HunyuanVideo15Transformer3DModel(**cfg).eval()


def tiny_siglip():
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    cfg = SiglipVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                             image_size=16, patch_size=4)
    return SiglipVisionModel(cfg).eval(), SiglipImageProcessor(size={"height": 16, "width": 16})


def tiny_hv15_text_encoders() -> dict:
    """A 3-layer Qwen2.5-VL text model (16-d; the pipeline reads its third-last hidden state) with the
    word-level tokenizer and a plain chat template, and a 1-layer ByT5-style T5 encoder (8-d) with
    ByT5's own (file-free) tokenizer. Slow-ish: the pipeline pads Qwen text to 1108 tokens."""
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, T5Config, T5EncoderModel

    torch.manual_seed(0)
    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(VOCAB), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}, max_position_embeddings=2048,
        pad_token_id=0, bos_token_id=1, eos_token_id=1)).eval()
    tok = tiny_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    t5 = T5EncoderModel(T5Config(vocab_size=384, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)).eval()
    return dict(text_encoder=qwen, tokenizer=tok, text_encoder_2=t5, tokenizer_2=ByT5Tokenizer())


def tiny_hv15(i2v: bool = False, shift: float = 5.0, guidance_scale: float = 4.0, text_encoders: bool = False,
              **guider_kwargs):
    """A HunyuanVideo15Pipeline (or ``i2v``: HunyuanVideo15ImageToVideoPipeline) with random weights and
    the pipeline's ClassifierFreeGuidance guider; 64x64 px, 5 frames in a fraction of a second.
    ``text_encoders``: with ``tiny_hv15_text_encoders`` (else calls pass ``hv15_embeds``)."""
    from diffusers import (ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, HunyuanVideo15ImageToVideoPipeline,
                           HunyuanVideo15Pipeline)

    parts = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    if text_encoders:
        parts.update(tiny_hv15_text_encoders())
    parts.update(transformer=tiny_hv15_transformer(task_type="i2v" if i2v else "t2v"), vae=tiny_hv15_vae(),
                 scheduler=FlowMatchEulerDiscreteScheduler(shift=shift),
                 guider=ClassifierFreeGuidance(guidance_scale=guidance_scale, **guider_kwargs))
    if i2v:
        enc, proc = tiny_siglip()
        pipe = HunyuanVideo15ImageToVideoPipeline(image_encoder=enc, feature_extractor=proc, **parts)
    else:
        pipe = HunyuanVideo15Pipeline(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hv15_embeds(batch: int = 1, seed: int = 0, valid: int = 5, valid_2: int = 2, negative: bool = False) -> dict:
    """Precomputed text for the tiny HunyuanVideo-1.5 transformer: Qwen states ``(B, 8, 16)`` with a
    right-padded mask of ``valid`` ones, ByT5 states ``(B, 4, 8)`` with ``valid_2`` ones."""
    g = torch.Generator().manual_seed(seed)
    p = "negative_" if negative else ""
    mask = torch.zeros(batch, HV15_TEXT_LEN, dtype=torch.long)
    mask[:, :valid] = 1
    mask_2 = torch.zeros(batch, HV15_TEXT2_LEN, dtype=torch.long)
    mask_2[:, :valid_2] = 1
    return {f"{p}prompt_embeds": torch.randn(batch, HV15_TEXT_LEN, 16, generator=g), f"{p}prompt_embeds_mask": mask,
            f"{p}prompt_embeds_2": torch.randn(batch, HV15_TEXT2_LEN, 8, generator=g),
            f"{p}prompt_embeds_mask_2": mask_2}


def hv15_kwargs(batch: int = 1, cfg: bool = True, **overrides) -> dict:
    """Call arguments for ``tiny_hv15`` (T2V at 64x64 unless overridden; drop height/width for I2V)."""
    kw = dict(height=64, width=64, num_frames=5, num_inference_steps=4, output_type="np")
    kw.update(hv15_embeds(batch, seed=1, valid=5, valid_2=2))
    if cfg:
        kw.update(hv15_embeds(batch, seed=2, valid=3, valid_2=1, negative=True))
    kw.update(overrides)
    return kw
