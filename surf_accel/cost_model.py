"""Analytic cost model (docs/design.md 6): FLOPs per stage for the baseline and for SURF.

Transformer FLOPs per forward (one matmul multiply-add = 2 FLOPs), ``L`` video tokens, ``Lt`` text
tokens, width ``d``, FFN width ``f``, ``N`` blocks (Wan layout: self-attention, text
cross-attention, FFN):

- linear: ``N * (4 L d^2 [q k v o] + 2 L d^2 [cross q o] + 2 Lt d^2 [cross k v] + 2 L d f [FFN]) * 2``
  plus patch embedding and head;
- attention: ``N * (2 * 2 L K d [self: QK^T and PV, K keys per query] + 2 * 2 L Lt d [cross]) ``
  where ``K = L`` for dense attention and the window's token count with shifted windows.

HunyuanVideo (``HunyuanVideoSpec``): ``N2`` dual-stream and ``N1`` single-stream blocks, both
attending jointly over the ``L + Lt`` video and text tokens, MLP width ``m = 4 d``:

- linear: ``(N2 + N1) * (L + Lt) * (4 d^2 + 2 d m) * 2`` (dual: q k v o and the MLP for each
  stream; single: q k v, the MLP input and the output projection of ``[attention, MLP]``, the same
  count), plus the text token refiner, patch embedding, head and the per-sample modulations;
- attention: ``(N2 + N1) * 4 d (L + Lt)^2`` dense; with windows video queries see their ``K``
  window keys plus the text, text queries see everything: ``4 d (L (K + Lt) + Lt (L + Lt))``.
  ``Lt`` is the padded text length (256): dense kernels compute the masked keys too.

Classifier-free guidance doubles every step (HunyuanVideo is guidance-distilled: one pass unless
true CFG is asked for). VAE passes are counted with per-pixel FLOPs measured with
``torch.utils.flop_counter`` on the real VAE configs (``measure_vae``): a causal 3D VAE costs
``a + b * (F - 1)`` per output pixel for ``F`` frames. Elementwise work (norms, activations, RoPE,
the fused latent ops) is left out: it is memory-bound and small next to the matmuls at these sizes,
which is also why measured speedups fall a little short of these ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from surf_accel.config import SurfConfig
from surf_accel.planner import FamilySpec, Plan, Request, SchedulerSpec, Stage, plan_stages


@dataclass(frozen=True)
class TransformerSpec:
    """A WanTransformer3DModel's shape (self-attention, text cross-attention, FFN per block)."""

    name: str
    dim: int
    ffn_dim: int
    num_layers: int
    num_heads: int
    text_len: int = 512
    text_dim: int = 4096
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    freq_dim: int = 256
    family: str = "wan2.1"

    @property
    def params(self) -> int:
        d, f = self.dim, self.ffn_dim
        per_block = 4 * d * d + 4 * d * d + 2 * d * f  # self, cross, FFN (weights only)
        return self.num_layers * per_block

    @classmethod
    def from_config(cls, cfg, name: str = "custom", text_len: Optional[int] = None) -> "TransformerSpec":
        """From a ``WanTransformer3DModel`` config (dict or FrozenDict)."""
        g = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        return cls(name, int(g("num_attention_heads") * g("attention_head_dim")), int(g("ffn_dim")),
                   int(g("num_layers")), int(g("num_attention_heads")), int(text_len or 512), int(g("text_dim")),
                   int(g("in_channels")), int(g("out_channels")), tuple(g("patch_size")), int(g("freq_dim")))


@dataclass(frozen=True)
class HunyuanVideoSpec:
    """A HunyuanVideoTransformer3DModel's shape: dual- then single-stream blocks, joint attention."""

    name: str
    dim: int = 3072
    num_heads: int = 24
    num_layers: int = 20  # dual-stream blocks
    num_single_layers: int = 40
    num_refiner_layers: int = 2  # text token refiner
    mlp_ratio: float = 4.0
    text_len: int = 256  # HunyuanVideoPipeline's max_sequence_length (Llama tokens after the template)
    text_dim: int = 4096
    pooled_dim: int = 768
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    family: str = "hunyuanvideo"

    @property
    def mlp_dim(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def params(self) -> int:
        """Weights of the dual- and single-stream blocks (the bulk of the model)."""
        d, m = self.dim, self.mlp_dim
        dual = 8 * d * d + 4 * d * m + 12 * d * d  # q k v o per stream, two MLPs, two 6d modulations
        single = 3 * d * d + d * m + (d + m) * d + 3 * d * d  # q k v, MLP in, [attn, MLP] out, modulation
        return self.num_layers * dual + self.num_single_layers * single

    @classmethod
    def from_config(cls, cfg, name: str = "custom", text_len: int = 256) -> "HunyuanVideoSpec":
        """From a ``HunyuanVideoTransformer3DModel`` config (dict or FrozenDict)."""
        g = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        p = int(g("patch_size"))
        return cls(name, int(g("num_attention_heads") * g("attention_head_dim")), int(g("num_attention_heads")),
                   int(g("num_layers")), int(g("num_single_layers")), int(g("num_refiner_layers")),
                   float(g("mlp_ratio")), int(text_len), int(g("text_embed_dim")), int(g("pooled_projection_dim")),
                   int(g("in_channels")), int(g("out_channels")), (int(g("patch_size_t")), p, p))


@dataclass(frozen=True)
class HunyuanVideo15Spec(HunyuanVideoSpec):
    """A HunyuanVideo15Transformer3DModel's shape: dual-stream blocks only, joint attention over the
    video and ``text_len`` Qwen2.5-VL + ``text_2_len`` ByT5 + ``image_len`` SigLIP tokens (the
    padded lengths: dense kernels compute the masked ones too; T2V passes zero image states)."""

    dim: int = 2048
    num_heads: int = 16
    num_layers: int = 54
    num_single_layers: int = 0
    text_len: int = 1000  # the pipeline's tokenizer_max_length (Qwen tokens after the template crop)
    text_dim: int = 3584
    pooled_dim: int = 3584  # the token refiner pools the Qwen states
    in_channels: int = 65  # latents, condition latents, mask
    out_channels: int = 32
    patch_size: tuple[int, int, int] = (1, 1, 1)
    text_2_len: int = 256  # tokenizer_2_max_length (ByT5)
    text_2_dim: int = 1472
    image_len: int = 729  # vision_num_semantic_tokens (SigLIP)
    image_dim: int = 1152
    family: str = "hunyuanvideo-1.5-480p"

    @property
    def joint_text_len(self) -> int:
        return self.text_len + self.text_2_len + self.image_len

    @classmethod
    def from_config(cls, cfg, name: str = "custom", text_len: int = 1000,
                    family: str = "hunyuanvideo-1.5-480p") -> "HunyuanVideo15Spec":
        """From a ``HunyuanVideo15Transformer3DModel`` config (dict or FrozenDict)."""
        g = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
        p = int(g("patch_size"))
        return cls(name, dim=int(g("num_attention_heads") * g("attention_head_dim")),
                   num_heads=int(g("num_attention_heads")), num_layers=int(g("num_layers")),
                   num_refiner_layers=int(g("num_refiner_layers")), mlp_ratio=float(g("mlp_ratio")),
                   text_len=int(text_len), text_dim=int(g("text_embed_dim")), pooled_dim=int(g("text_embed_dim")),
                   in_channels=int(g("in_channels")), out_channels=int(g("out_channels")),
                   patch_size=(int(g("patch_size_t")), p, p), text_2_dim=int(g("text_embed_2_dim")),
                   image_dim=int(g("image_embed_dim")), family=family)


@dataclass(frozen=True)
class VaeSpec:
    """FLOPs per output pixel: ``a + b * (frames - 1)`` for encode and decode."""

    enc_a: float
    enc_b: float
    dec_a: float
    dec_b: float
    spatial: int = 8
    temporal: int = 4

    def encode_flops(self, frames: int, height: int, width: int) -> float:
        return (self.enc_a + self.enc_b * (frames - 1)) * height * width

    def decode_flops(self, frames: int, height: int, width: int) -> float:
        return (self.dec_a + self.dec_b * (frames - 1)) * height * width


# Published Wan2.1 configs (Wan-AI/Wan2.1-T2V-{14B,1.3B}-Diffusers transformer/config.json).
# HunyuanVideo 13B: the published transformer config, which is HunyuanVideoTransformer3DModel()'s
# defaults in diffusers (20 dual + 40 single blocks, 24 heads x 128, MLP ratio 4, patch (1, 2, 2)).
MODELS = {
    "wan2.1-14b": TransformerSpec("wan2.1-14b", dim=5120, ffn_dim=13824, num_layers=40, num_heads=40),
    "wan2.1-1.3b": TransformerSpec("wan2.1-1.3b", dim=1536, ffn_dim=8960, num_layers=30, num_heads=12),
    "hunyuanvideo": HunyuanVideoSpec("hunyuanvideo"),
    # Wan2.2 A14B (Wan-AI/Wan2.2-T2V-A14B-Diffusers transformer/ and transformer_2/config.json): two
    # experts of Wan2.1-14B's shape; a step runs one of them (the boundary picks which), so a step costs
    # one 14B forward. The I2V experts read 36 input channels (latents + mask + image latents).
    "wan2.2-a14b": TransformerSpec("wan2.2-a14b", dim=5120, ffn_dim=13824, num_layers=40, num_heads=40,
                                   family="wan2.2-a14b"),
    # Wan2.2 TI2V-5B: diffusers' scripts/convert_wan_to_diffusers.py "Wan2.2-TI2V-5B" (= the published
    # Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer config): 24 heads x 128, ffn 14336, 30 layers, 48 channels
    "wan2.2-ti2v-5b": TransformerSpec("wan2.2-ti2v-5b", dim=3072, ffn_dim=14336, num_layers=30, num_heads=24,
                                      in_channels=48, out_channels=48, family="wan2.2-ti2v"),
    # HunyuanVideo-1.5 8.3B: HunyuanVideo15Transformer3DModel()'s defaults in diffusers, which are the
    # published config (tencent/HunyuanVideo-1.5 transformer/480p_t2v/config.json: hidden_size 2048,
    # heads_num 16, mm_double_blocks_depth 54, mm_single_blocks_depth 0, mlp_width_ratio 4, patch [1, 1, 1],
    # text_states_dim 3584, vision_states_dim 1152; in_channels 32 + 32 + 1). One spec per checkpoint
    # resolution: the 480p and 720p transformers share the shape and differ in their optimal size.
    "hunyuanvideo-1.5-480p": HunyuanVideo15Spec("hunyuanvideo-1.5-480p"),
    "hunyuanvideo-1.5-720p": HunyuanVideo15Spec("hunyuanvideo-1.5-720p", family="hunyuanvideo-1.5-720p"),
}
# AutoencoderKLWan() default config (= Wan2.1's VAE), measured with measure_vae() on the meta device
# (5 and 9 frames at 64x64 px): encode 5.33 / 5.19 MFLOP per pixel, decode 8.91 / 8.70.
WAN_VAE = VaeSpec(enc_a=6.66e6, enc_b=5.00e6, dec_a=10.75e6, dec_b=8.45e6)
WAN_FAMILY = FamilySpec("wan2.1", 8, 4, (1, 2, 2), 480 * 832)
WAN_SCHEDULER = SchedulerSpec("unipc", 5.0)  # diffusers' Wan example: UniPC, flow_shift 5.0 at 720p
# AutoencoderKLHunyuanVideo() default config (= HunyuanVideo's VAE, framewise encoding/decoding on as
# in diffusers), measure_vae(frames=(65, 129), size=(720, 1280)) on the meta device: 1778 / 3255
# MFLOP per pixel at 129 frames. Fitted at 720p: the mid-block attention over the latent grid adds a
# little per pixel as the size grows, so smaller sizes come out up to ~7% high (the VAE is ~1% of a
# HunyuanVideo 720p generation).
HUNYUAN_VAE = VaeSpec(enc_a=11.80e6, enc_b=13.80e6, dec_a=27.60e6, dec_b=25.22e6)
# = integrations.hunyuan_video.HUNYUAN_OPTIMAL_AREA (720p: the published checkpoint and default size)
HUNYUAN_FAMILY = FamilySpec("hunyuanvideo", 8, 4, (1, 2, 2), 720 * 1280)
# HunyuanVideoPipeline: FlowMatchEulerDiscreteScheduler, shift 7.0, on the uniform grid it passes as sigmas
HUNYUAN_SCHEDULER = SchedulerSpec("euler", 7.0, grid="uniform")
# Wan2.2's VAE (Wan-AI/Wan2.2-TI2V-5B-Diffusers vae/config.json: base_dim 160, decoder_base_dim 256,
# z_dim 48, residual blocks, its own 2x2 patch, 16x spatial / 4x temporal), measure_vae() on the meta
# device (5 and 9 frames at 64x64 px): encode 18.6 / 32.6 MFLOP per pixel, decode 96.4 / 169.9.
WAN22_VAE = VaeSpec(enc_a=4.64e6, enc_b=3.49e6, dec_a=22.78e6, dec_b=18.39e6, spatial=16, temporal=4)
# = integrations.wan.WAN22_TI2V_OPTIMAL_AREA (TI2V-5B's published 720p, 1280x704)
WAN22_TI2V_FAMILY = FamilySpec("wan2.2-ti2v", 16, 4, (1, 2, 2), 704 * 1280)
# The A14B experts keep Wan2.1's VAE and 480p optimal size. Flow shifts do not change FLOP counts.
WAN22_A14B_FAMILY = FamilySpec("wan2.2-a14b", 8, 4, (1, 2, 2), 480 * 832)
# AutoencoderKLHunyuanVideo15() default config (= HunyuanVideo-1.5's VAE, 16x spatial, 4x temporal, 32
# channels), measure_vae(frames=(61, 121), size=(720, 1280)) on the meta device: 1755 / 3077 MFLOP per
# pixel encode / decode at 121 frames. The fit holds near 121 frames (its mid-block attention over the
# whole latent video grows faster than linearly, hence the negative intercept).
HUNYUAN15_VAE = VaeSpec(enc_a=-8.65e6, enc_b=14.70e6, dec_a=6.49e6, dec_b=25.59e6, spatial=16, temporal=4)
# = integrations.hunyuan_video15: the checkpoints' bucket areas, target_size ** 2 (640 for 480p, 960 for 720p)
HUNYUAN15_FAMILIES = {res: FamilySpec("hunyuanvideo-1.5", 16, 4, (1, 1, 1), size * size)
                      for res, size in (("480p", 640), ("720p", 960))}
# HunyuanVideo15Pipeline: FlowMatchEulerDiscreteScheduler on the uniform grid it passes as sigmas; shift 7.0
# is Tencent's default flow_shift (the shift does not change a FLOP count)
HUNYUAN15_SCHEDULER = SchedulerSpec("euler", 7.0, grid="uniform")


@dataclass(frozen=True)
class FamilyDefaults:
    """What ``estimate`` assumes for a model family unless told otherwise."""

    family: FamilySpec
    scheduler: SchedulerSpec
    vae: VaeSpec
    cfg: bool  # the usual call: two passes per step (classifier-free guidance) or one
    preset: str  # the SurfConfig preset ``surf_accel.patch`` uses for this family
    frames: int  # the pipeline's default num_frames


FAMILIES = {
    "wan2.1": FamilyDefaults(WAN_FAMILY, WAN_SCHEDULER, WAN_VAE, cfg=True, preset="paper", frames=81),
    # guidance-distilled: the pipeline's default call embeds guidance 6.0 and runs one pass per step
    "hunyuanvideo": FamilyDefaults(HUNYUAN_FAMILY, HUNYUAN_SCHEDULER, HUNYUAN_VAE, cfg=False, preset="hunyuan-paper",
                                   frames=129),
    # Wan2.2: 81 frames at 16 fps for A14B, 121 at 24 fps for TI2V-5B (the published generate defaults)
    "wan2.2-a14b": FamilyDefaults(WAN22_A14B_FAMILY, WAN_SCHEDULER, WAN_VAE, cfg=True, preset="paper", frames=81),
    "wan2.2-ti2v": FamilyDefaults(WAN22_TI2V_FAMILY, WAN_SCHEDULER, WAN22_VAE, cfg=True, preset="paper", frames=121),
    # the pipeline's guider runs CFG (two passes) unless a distilled checkpoint disables it; 121 frames
    **{f"hunyuanvideo-1.5-{res}": FamilyDefaults(fam, HUNYUAN15_SCHEDULER, HUNYUAN15_VAE, cfg=True, preset="paper",
                                                 frames=121) for res, fam in HUNYUAN15_FAMILIES.items()},
}


_MEASURED_VAES: dict[str, VaeSpec] = {}


def vae_spec(vae) -> VaeSpec:
    """``measure_vae`` of a meta-device copy of ``vae``'s architecture, once per VAE config (its
    weights and device are never touched)."""
    import json

    import torch

    key = type(vae).__name__ + json.dumps(dict(vae.config), sort_keys=True, default=str)
    if key not in _MEASURED_VAES:
        with torch.device("meta"):
            meta = type(vae).from_config(vae.config)
        _MEASURED_VAES[key] = measure_vae(meta)
    return _MEASURED_VAES[key]


def measure_vae(vae, frames=(5, 9), size=(64, 64), device="meta") -> VaeSpec:
    """Per-pixel VAE FLOPs of ``vae`` (AutoencoderKLWan or AutoencoderKLHunyuanVideo) with
    ``torch.utils.flop_counter``, fitted as ``a + b * (frames - 1)`` through two frame counts."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    h, w = size
    cfg = vae.config
    spatial = cfg.get("scale_factor_spatial") or cfg.get("spatial_compression_ratio")
    temporal = cfg.get("scale_factor_temporal") or cfg.get("temporal_compression_ratio")
    enc, dec = [], []
    # a Wan2.2 VAE patchifies RGB itself: its in_channels count the 2x2 patch's channels (12 = 3 x 4)
    rgb = cfg.in_channels // (cfg.get("patch_size") or 1) ** 2
    for f in frames:
        x = torch.zeros(1, rgb, f, h, w, device=device, dtype=vae.dtype)
        with FlopCounterMode(display=False) as fc:
            z = vae.encode(x).latent_dist.mode()
        enc.append(fc.get_total_flops() / (h * w))
        with FlopCounterMode(display=False) as fc:
            vae.decode(z)
        dec.append(fc.get_total_flops() / (h * w))
    (f0, f1) = frames
    eb, db = (enc[1] - enc[0]) / (f1 - f0), (dec[1] - dec[0]) / (f1 - f0)
    return VaeSpec(enc[0] - eb * (f0 - 1), eb, dec[0] - db * (f0 - 1), db, int(spatial), int(temporal))


def _grid_and_keys(spec, latent_size, window, sparse=None) -> tuple[int, float]:
    """Video tokens ``L`` and keys per video query ``K`` (``L`` dense, the window's tokens windowed,
    the mean over queries of a sparse preview pattern's keys)."""
    pt, ph, pw = spec.patch_size
    grid = (math.ceil(latent_size[0] / pt), latent_size[1] // ph, latent_size[2] // pw)
    L = grid[0] * grid[1] * grid[2]
    if sparse is not None:
        return L, sparse.keys_per_query(grid)
    K = L if window is None else math.prod(min(w, g) for w, g in zip(window, grid))
    return L, K


def _hunyuan_forward_flops(spec: HunyuanVideoSpec, L: int, K: int) -> dict:
    Lt, d, m = spec.text_len, spec.dim, spec.mlp_dim
    blocks = spec.num_layers + spec.num_single_layers
    per_token = 4 * d * d + 2 * d * m  # every block, every video and text token (see the module doc)
    linear = blocks * (L + Lt) * per_token
    linear += Lt * (spec.text_dim * d + spec.num_refiner_layers * per_token)  # token refiner
    patch = spec.patch_size[0] * spec.patch_size[1] * spec.patch_size[2]
    linear += L * d * patch * (spec.in_channels + spec.out_channels)  # patch embedding, head
    # per-sample conditioning: modulations (dual 2 x 6d, single 3d, refiner 2d, head 2d outputs) and
    # the timestep / guidance / pooled-text embedders
    linear += d * d * (12 * spec.num_layers + 3 * spec.num_single_layers + 2 * spec.num_refiner_layers + 2)
    linear += 2 * (256 * d + d * d) + (spec.pooled_dim * d + d * d) + (spec.text_dim * d + d * d) + 256 * d + d * d
    attention = blocks * 2 * 2 * d * (L * (K + Lt) + Lt * (L + Lt))
    attention += spec.num_refiner_layers * 2 * 2 * d * Lt * Lt
    return {"linear": float(2 * linear), "attention": float(attention), "tokens": L}


def _hunyuan15_forward_flops(spec: HunyuanVideo15Spec, L: int, K: int) -> dict:
    """HunyuanVideo's count over the joint text (``joint_text_len`` tokens in every block), with the
    token refiner over the Qwen tokens only and the ByT5 (in -> 2048 -> 2048 -> d) and SigLIP
    (in -> in -> d) projections."""
    import dataclasses

    d, Lq = spec.dim, spec.text_len
    out = _hunyuan_forward_flops(dataclasses.replace(spec, text_len=spec.joint_text_len, num_refiner_layers=0), L, K)
    per_token = 4 * d * d + 2 * d * spec.mlp_dim
    # the refiner blocks over the Qwen tokens (and their 2d modulations), whose input projection reads them only
    extra = spec.num_refiner_layers * (Lq * per_token + 2 * d * d) - (spec.joint_text_len - Lq) * spec.text_dim * d
    extra += spec.text_2_len * (spec.text_2_dim * 2048 + 2048 * 2048 + 2048 * d)
    extra += spec.image_len * (spec.image_dim * spec.image_dim + spec.image_dim * d)
    extra -= 256 * d + d * d + spec.pooled_dim * d + d * d  # no guidance or pooled-CLIP embedder
    out["linear"] += float(2 * extra)
    out["attention"] += float(spec.num_refiner_layers * 2 * 2 * d * Lq * Lq)
    return out


def forward_flops(spec: TransformerSpec | HunyuanVideoSpec, latent_size: tuple[int, int, int],
                  window: Optional[tuple[int, int, int]] = None, sparse=None) -> dict:
    """FLOPs of one transformer forward at a latent size ``(T, H, W)``: ``{"linear", "attention"}``;
    ``sparse``: a ``SparsePattern`` on the video self-attention (``SurfConfig.preview_attention``)."""
    L, K = _grid_and_keys(spec, latent_size, window, sparse)
    if isinstance(spec, HunyuanVideo15Spec):
        return _hunyuan15_forward_flops(spec, L, K)
    if isinstance(spec, HunyuanVideoSpec):
        return _hunyuan_forward_flops(spec, L, K)
    pt, ph, pw = spec.patch_size
    Lt, d, f, N = spec.text_len, spec.dim, spec.ffn_dim, spec.num_layers
    linear = N * 2 * (4 * L * d * d + 2 * L * d * d + 2 * Lt * d * d + 2 * L * d * f)
    patch_in = pt * ph * pw * spec.in_channels
    patch_out = pt * ph * pw * spec.out_channels
    linear += 2 * L * d * (patch_in + patch_out)
    linear += 2 * Lt * spec.text_dim * d + 2 * Lt * d * d  # text embedding MLP
    attention = N * (2 * 2 * L * K * d + 2 * 2 * L * Lt * d)
    return {"linear": float(linear), "attention": float(attention), "tokens": L}


@dataclass
class StageCost:
    name: str
    size: tuple[int, int]  # pixels
    tokens: int
    steps: int
    passes_per_step: int  # 2 with classifier-free guidance
    linear: float
    attention: float
    model: str = ""

    @property
    def total(self) -> float:
        return self.linear + self.attention


@dataclass
class Estimate:
    model: str
    height: int
    width: int
    frames: int
    baseline: list = field(default_factory=list)  # StageCost rows + VAE rows (dict)
    surf: list = field(default_factory=list)
    baseline_vae: dict = field(default_factory=dict)
    surf_vae: dict = field(default_factory=dict)
    plan: Optional[Plan] = None

    @property
    def cost_warning(self) -> Optional[str]:
        """Why SURF counts more FLOPs than the unpatched call, or ``None`` where it counts fewer."""
        if self.surf_total <= self.baseline_total:
            return None
        t_base = sum(s.total for s in self.baseline)
        t_surf = sum(s.total for s in self.surf)
        vae_extra = sum(self.surf_vae.values()) - sum(self.baseline_vae.values())
        head = (f"SURF counts more FLOPs than the unpatched call ({self.surf_total / 1e12:.4g} vs "
                f"{self.baseline_total / 1e12:.4g} TFLOP): ")
        if t_surf <= t_base:
            return head + (f"the pixel handoff's VAE round trip ({vae_extra / 1e12:.4g} TFLOP) costs more than the "
                           f"{(t_base - t_surf) / 1e12:.4g} TFLOP of transformer work it saves; use handoff='latent' "
                           "or call with more steps")
        return head + ("at this size and step count the extra stages' per-step costs (text attention and embeddings, "
                       "which do not shrink with the resolution) outweigh their smaller token counts; call with more "
                       "steps or at a larger size, lower the step fractions, or use SurfConfig.identity()")

    @property
    def warnings(self) -> tuple[str, ...]:
        """The plan's warnings, then the cost warning if any."""
        w = self.cost_warning
        return tuple(self.plan.warnings if self.plan is not None else ()) + ((w,) if w else ())

    @property
    def baseline_total(self) -> float:
        return sum(s.total for s in self.baseline) + sum(self.baseline_vae.values())

    @property
    def surf_total(self) -> float:
        return sum(s.total for s in self.surf) + sum(self.surf_vae.values())

    @property
    def speedup(self) -> float:
        return self.baseline_total / self.surf_total

    @property
    def floor(self) -> float:
        """The speedup's ceiling: SURF's cost if only its optimal-resolution steps and VAE passes remained."""
        first = self.surf[0].total if self.surf else 0.0
        return self.baseline_total / (first + sum(self.surf_vae.values()))

    def table(self) -> str:
        def fmt(x):
            return f"{x / 1e12:10.2f}"

        lines = [f"{self.model}: {self.height}x{self.width}, {self.frames} frames "
                 "(TFLOPs; x = passes per step, 2 with classifier-free guidance; linear / attention / total)",
                 f"{'run':9s} {'stage':12s} {'size':>10s} {'tokens':>7s} {'steps':>5s} {'x':>2s} "
                 f"{'linear':>10s} {'attention':>10s} {'total':>10s}"]
        for label, rows, vae in (("baseline", self.baseline, self.baseline_vae), ("surf", self.surf, self.surf_vae)):
            for s in rows:
                lines.append(f"{label:9s} {s.name:12s} {s.size[0]:>4d}x{s.size[1]:<5d} {s.tokens:>7d} {s.steps:>5d} "
                             f"{s.passes_per_step:>2d} {fmt(s.linear)} {fmt(s.attention)} {fmt(s.total)}")
            for k, v in vae.items():
                lines.append(f"{label:9s} {k:12s} {'':>10s} {'':>7s} {'':>5s} {'':>2s} {'':>10s} {'':>10s} {fmt(v)}")
            total = self.baseline_total if label == "baseline" else self.surf_total
            lines.append(f"{label:9s} {'TOTAL':12s} {'':>10s} {'':>7s} {'':>5s} {'':>2s} {'':>10s} {'':>10s} {fmt(total)}")
        lines.append(f"predicted speedup {self.speedup:.2f}x (ceiling {self.floor:.2f}x if the low-resolution and "
                     "refine stages were free)")
        return "\n".join(lines)


def _stage_cost(spec: TransformerSpec, stage: Stage, cfg_passes: int, name_model: str, sparse=None) -> StageCost:
    fl = forward_flops(spec, stage.latent_size, stage.window, sparse if stage.name.startswith("preview") else None)
    k = stage.steps * cfg_passes
    return StageCost(stage.name, (stage.height, stage.width), fl["tokens"], stage.steps, cfg_passes,
                     k * fl["linear"], k * fl["attention"], name_model)


def estimate(model: str | TransformerSpec | HunyuanVideoSpec, height: int, width: int, frames: int,
             config: Optional[SurfConfig] = None, *, steps: int = 50, guidance: Optional[bool] = None,
             refiner: Optional[str | TransformerSpec | HunyuanVideoSpec] = None, vae: Optional[VaeSpec] = None,
             family: Optional[FamilySpec] = None, scheduler: Optional[SchedulerSpec] = None,
             decode_output: bool = True) -> Estimate:
    """Baseline (``steps`` at the request's size) vs SURF (``config``) FLOPs.

    ``None`` for ``config``, ``guidance``, ``vae``, ``family``, ``scheduler``: the model family's
    defaults (``FAMILIES``: Wan2.1 with CFG and the ``"paper"`` preset, HunyuanVideo with one pass per
    step and the ``"hunyuan-paper"`` preset). ``guidance=True`` counts two passes per step.
    ``refiner=None``: training-free refine with the base model (guidance as the call);
    a model name or spec: a trained refiner of that size (no guidance, docs/design.md 1.3).
    ``decode_output=False``: leave out the final VAE decode on both sides (``output_type="latent"``).
    """
    if isinstance(model, str) and model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {sorted(MODELS)}")
    spec = MODELS[model] if isinstance(model, str) else model
    ref_spec = None
    if refiner is not None:
        if isinstance(refiner, str) and refiner not in MODELS:
            raise ValueError(f"unknown refiner model {refiner!r}; known: {sorted(MODELS)}")
        ref_spec = MODELS[refiner] if isinstance(refiner, str) else refiner
    defaults = FAMILIES[spec.family]
    family = family or defaults.family
    scheduler = scheduler or defaults.scheduler
    config = config or SurfConfig.preset(defaults.preset)
    passes = 2 if (defaults.cfg if guidance is None else guidance) else 1
    plan = plan_stages(Request(height, width, frames, steps), family, scheduler, config,
                       trained_refiner=ref_spec is not None)
    return estimate_plan(plan, spec, passes=passes, vae=vae or defaults.vae, refiner=ref_spec,
                         decode_output=decode_output)


def estimate_plan(plan: Plan, spec: TransformerSpec | HunyuanVideoSpec, *, passes: int, vae: VaeSpec,
                  refiner: Optional[TransformerSpec | HunyuanVideoSpec] = None,
                  refiner_passes: Optional[int] = None, decode_output: bool = True) -> Estimate:
    """Costs of a planned call: the baseline (the request's steps at its size with ``spec``) and the
    plan. ``passes``: transformer passes per step of the call (2 with classifier-free guidance);
    ``refiner``: the spec of the model a ``"trained_refiner"`` or ``"refiner_transformer"`` stage runs
    (``refiner_passes`` per step for the latter; a trained refiner always takes one)."""
    req, config = plan.request, plan.config
    base_plan = plan_stages(req, plan.family, plan.scheduler, SurfConfig.identity())
    est = Estimate(spec.name, req.height, req.width, req.num_frames, plan=plan)
    est.baseline = [_stage_cost(spec, s, passes, spec.name) for s in base_plan.stages]
    for s in plan.stages:
        if s.model == "trained_refiner":
            est.surf.append(_stage_cost(refiner, s, 1, refiner.name))
            continue
        g = config.refine_guidance if (s.name == "refine" and config.refine_guidance is not None) else None
        p = passes if g is None else (2 if g > 1 else 1)
        if s.model == "refiner_transformer":
            est.surf.append(_stage_cost(refiner, s, p if refiner_passes is None else refiner_passes, refiner.name))
        else:
            est.surf.append(_stage_cost(spec, s, p, spec.name, config.preview_attention))
    f = req.num_frames
    est.baseline_vae = {"vae decode": vae.decode_flops(f, req.height, req.width)} if decode_output else {}
    out = plan.stages[-1]
    surf_vae = {}
    if out.start == "handoff" and config.handoff == "pixel":
        prev = plan.stages[-2]
        surf_vae["vae decode lr"] = vae.decode_flops(f, prev.height, prev.width)
        surf_vae["vae encode"] = vae.encode_flops(f, out.height, out.width)
    if decode_output:
        surf_vae["vae decode"] = vae.decode_flops(f, out.height, out.width)
    est.surf_vae = surf_vae
    return est


# ---------------------------------------------------------------------------- trained refiners
@dataclass(frozen=True)
class RefinerInfo:
    """A trained refiner as the cost model sees it: its transformer's shape, its own Euler step count
    and the shifted windows it was trained with (``None`` where the source does not say)."""

    spec: TransformerSpec
    num_steps: Optional[int] = None
    window: Optional[tuple[int, int, int]] = None
    source: str = ""


def _base_transformer_config(base: str) -> dict:
    import json
    import os

    if base == "toy":
        from surf_accel.toyworld import PIPELINE_DIR

        path = os.path.join(str(PIPELINE_DIR), "transformer", "config.json")
    else:
        path = os.path.join(base, "transformer", "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"the training config's base transformer config {path} does not exist")
    with open(path) as f:
        return json.load(f)


def load_refiner_spec(path: str, *, text_len: Optional[int] = None) -> RefinerInfo:
    """The cost model's view of any trained refiner ``path``:

    - a ``surf_accel.Refiner`` folder or its ``config.json`` (transformer config, ``num_steps``, the
      training metadata's window);
    - a diffusers ``WanTransformer3DModel`` folder or ``config.json`` (shape only);
    - a refiner training config (``.yaml``/``.yml``/``.json`` for ``surf-accel train-refiner``): the
      transformer it would train (its base's config with ``model.config`` overrides for
      ``init: scratch``), ``model.num_steps`` and ``model.window``.

    ``text_len``: text tokens the refiner reads (default 512, WanPipeline's padded length).
    """
    import json
    import os

    from surf_accel.refiner import CONFIG_NAME, REFINER_FORMAT

    p = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(p):
        raise FileNotFoundError(f"refiner {path!r}: no such folder or config file")
    if p.lower().endswith((".yaml", ".yml")):
        d = None
    else:
        with open(p) as f:
            d = json.load(f)
    name = os.path.basename(os.path.normpath(path))
    if name == CONFIG_NAME:  # a folder's config.json: the folder names the refiner
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if isinstance(d, dict) and d.get("format") == REFINER_FORMAT:
        window = (d.get("metadata") or {}).get("inference", {}).get("window")
        return RefinerInfo(TransformerSpec.from_config(d["transformer_config"], name, text_len),
                           int(d.get("num_steps", 10)), tuple(window) if window else None, "refiner folder")
    if isinstance(d, dict) and d.get("_class_name") == "WanTransformer3DModel":
        return RefinerInfo(TransformerSpec.from_config(d, name, text_len), None, None, "transformer config")
    if d is None or (isinstance(d, dict) and "output_dir" in d):
        from surf_accel.training.config import load_config

        cfg = load_config(p)
        if cfg.model.transformer:
            with open(os.path.join(cfg.model.transformer, "config.json")) as f:
                tcfg = json.load(f)
        else:
            tcfg = _base_transformer_config(cfg.base)
        if cfg.model.init == "scratch":
            tcfg.update(cfg.model.config)
        return RefinerInfo(TransformerSpec.from_config(tcfg, name, text_len), cfg.model.num_steps, cfg.model.window,
                           "training config")
    raise ValueError(f"{p} is neither a surf_accel Refiner config, a WanTransformer3DModel config nor a refiner "
                     "training config")
