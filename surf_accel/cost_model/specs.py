"""The cost model's transformer and VAE specs and their FLOP counts (docs/design.md 6).

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

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from surf_accel.planner import FamilySpec, SchedulerSpec


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

    def forward_flops(self, L: int, K: int) -> dict:
        """One forward over ``L`` video tokens whose queries see ``K`` keys each:
        ``{"linear", "attention", "tokens"}``."""
        pt, ph, pw = self.patch_size
        Lt, d, f, N = self.text_len, self.dim, self.ffn_dim, self.num_layers
        linear = N * 2 * (4 * L * d * d + 2 * L * d * d + 2 * Lt * d * d + 2 * L * d * f)
        patch_in = pt * ph * pw * self.in_channels
        patch_out = pt * ph * pw * self.out_channels
        linear += 2 * L * d * (patch_in + patch_out)
        linear += 2 * Lt * self.text_dim * d + 2 * Lt * d * d  # text embedding MLP
        attention = N * (2 * 2 * L * K * d + 2 * 2 * L * Lt * d)
        return {"linear": float(linear), "attention": float(attention), "tokens": L}


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

    def forward_flops(self, L: int, K: int) -> dict:
        """One forward over ``L`` video tokens whose queries see ``K`` video keys each (and all the text)."""
        Lt, d, m = self.text_len, self.dim, self.mlp_dim
        blocks = self.num_layers + self.num_single_layers
        per_token = 4 * d * d + 2 * d * m  # every block, every video and text token (see the module doc)
        linear = blocks * (L + Lt) * per_token
        linear += Lt * (self.text_dim * d + self.num_refiner_layers * per_token)  # token refiner
        patch = self.patch_size[0] * self.patch_size[1] * self.patch_size[2]
        linear += L * d * patch * (self.in_channels + self.out_channels)  # patch embedding, head
        # per-sample conditioning: modulations (dual 2 x 6d, single 3d, refiner 2d, head 2d outputs) and
        # the timestep / guidance / pooled-text embedders
        linear += d * d * (12 * self.num_layers + 3 * self.num_single_layers + 2 * self.num_refiner_layers + 2)
        linear += 2 * (256 * d + d * d) + (self.pooled_dim * d + d * d) + (self.text_dim * d + d * d) + 256 * d + d * d
        attention = blocks * 2 * 2 * d * (L * (K + Lt) + Lt * (L + Lt))
        attention += self.num_refiner_layers * 2 * 2 * d * Lt * Lt
        return {"linear": float(2 * linear), "attention": float(attention), "tokens": L}


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

    def forward_flops(self, L: int, K: int) -> dict:
        """HunyuanVideo's count over the joint text (``joint_text_len`` tokens in every block), with the
        token refiner over the Qwen tokens only and the ByT5 (in -> 2048 -> 2048 -> d) and SigLIP
        (in -> in -> d) projections."""
        d, Lq = self.dim, self.text_len
        joint = dataclasses.replace(self, text_len=self.joint_text_len, num_refiner_layers=0)
        out = HunyuanVideoSpec.forward_flops(joint, L, K)
        per_token = 4 * d * d + 2 * d * self.mlp_dim
        # the refiner blocks over the Qwen tokens (and their 2d modulations), whose input projection reads them only
        extra = self.num_refiner_layers * (Lq * per_token + 2 * d * d) - (self.joint_text_len - Lq) * self.text_dim * d
        extra += self.text_2_len * (self.text_2_dim * 2048 + 2048 * 2048 + 2048 * d)
        extra += self.image_len * (self.image_dim * self.image_dim + self.image_dim * d)
        extra -= 256 * d + d * d + self.pooled_dim * d + d * d  # no guidance or pooled-CLIP embedder
        out["linear"] += float(2 * extra)
        out["attention"] += float(self.num_refiner_layers * 2 * 2 * d * Lq * Lq)
        return out


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


@dataclass(frozen=True)
class FamilyDefaults:
    """What ``estimate`` assumes for a model family unless told otherwise."""

    family: FamilySpec
    scheduler: SchedulerSpec
    vae: VaeSpec
    cfg: bool  # the usual call: two passes per step (classifier-free guidance) or one
    preset: str  # the SurfConfig preset ``surf_accel.patch`` uses for this family
    frames: int  # the pipeline's default num_frames


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


def forward_flops(spec, latent_size: tuple[int, int, int], window: Optional[tuple[int, int, int]] = None,
                  sparse=None) -> dict:
    """FLOPs of one transformer forward of ``spec`` (any spec with ``patch_size`` and
    ``forward_flops(L, K)``) at a latent size ``(T, H, W)``: ``{"linear", "attention", "tokens"}``;
    ``sparse``: a ``SparsePattern`` on the video self-attention (``SurfConfig.preview_attention``)."""
    L, K = _grid_and_keys(spec, latent_size, window, sparse)
    return spec.forward_flops(L, K)
