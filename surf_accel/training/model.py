"""The refiner's model: the base pipeline it serves, the ``WanTransformer3DModel`` it trains and
the checks that the two fit together.

Initialisation (``ModelConfig.init``):

- ``"scratch"``: a random transformer with the base transformer's config (or ``model.transformer``'s)
  overridden by ``model.config`` (e.g. fewer layers or a narrower width: any size);
- ``"base"``: a full copy of the base (or ``model.transformer``'s) weights, all trained;
- ``"lora"``: that copy frozen, with peft LoRA adapters on the attention and FFN linears (only
  they train; ``export`` merges them).
"""

from __future__ import annotations

import copy
import json
import os
from types import SimpleNamespace
from typing import Any

import torch
from diffusers import DiffusionPipeline, WanTransformer3DModel
from diffusers.configuration_utils import FrozenDict

from surf_accel import registry
from surf_accel.refiner import Refiner
from surf_accel.toyworld import PIPELINE_DIR
from surf_accel.training.config import ModelConfig

TOY_BASE = "toy"


def load_base_pipeline(base: str, dtype: torch.dtype = torch.float32):
    """The base ``WanPipeline``: ``"toy"`` (the shipped toy pipeline) or a local diffusers folder, its
    transformer and text encoder in ``dtype``, its VAE in float32 (the latents pairs are made of, at any
    ``dtype``)."""
    folder = str(PIPELINE_DIR) if base == TOY_BASE else base
    if base != TOY_BASE and not (os.path.isdir(base) and os.path.isfile(os.path.join(base, "model_index.json"))):
        raise FileNotFoundError(f"base {base!r} is not a local diffusers pipeline folder (no model_index.json); "
                                "use 'toy' or the path of a Wan2.1 Diffusers folder")
    pipe = DiffusionPipeline.from_pretrained(folder, dtype={"default": dtype, "vae": torch.float32},
                                             local_files_only=True)
    wan = registry.family_named("wan").adapter
    wan.check_pipeline(pipe)  # a Wan pipeline with a supported scheduler, or TypeError
    if wan.is_wan22(pipe):
        raise TypeError("refiner training takes a Wan2.1 WanPipeline as its base; Wan2.2 pipelines (two experts or "
                        "expand_timesteps) are not supported for training yet (their training-free refine is)")
    if type(pipe).__name__ != "WanPipeline":
        raise TypeError(f"refiner training takes a text-to-video WanPipeline as its base, got {type(pipe).__name__}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def config_pipeline(base: str) -> SimpleNamespace:
    """The base pipeline without weights: ``transformer``, ``vae`` and ``text_encoder`` as objects with the
    ``config`` of their ``config.json``, and the VAE scale factors ``WanPipeline`` derives from it: what
    ``refiner_config`` and ``pairs.check_sizes`` read. ``"toy"``: the shipped toy pipeline's folder."""
    folder = str(PIPELINE_DIR) if base == TOY_BASE else base
    index_path = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index_path):
        raise FileNotFoundError(f"base {base!r} is not a local diffusers pipeline folder (no model_index.json); "
                                "use 'toy' or the path of a Wan2.1 Diffusers folder")
    with open(index_path) as f:
        index = json.load(f)
    if index.get("_class_name") != "WanPipeline":
        raise TypeError(f"refiner training takes a text-to-video WanPipeline as its base, got {index.get('_class_name')}")
    if (index.get("transformer_2") or [None])[0] is not None or index.get("expand_timesteps"):
        raise TypeError("refiner training takes a Wan2.1 WanPipeline as its base; Wan2.2 pipelines (two experts or "
                        "expand_timesteps) are not supported for training yet")
    parts = {}
    for name in ("transformer", "vae", "text_encoder"):
        path = os.path.join(folder, name, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"the base pipeline has no {path}")
        with open(path) as f:
            parts[name] = SimpleNamespace(config=FrozenDict(json.load(f)))
    vae = parts["vae"].config
    return SimpleNamespace(**parts, vae_scale_factor_spatial=int(vae.get("scale_factor_spatial", 8)),
                           vae_scale_factor_temporal=int(vae.get("scale_factor_temporal", 4)))


def text_width(pipe) -> int:
    """Width of the base text encoder's embeddings (what the refiner's ``text_dim`` must be)."""
    cfg = pipe.text_encoder.config
    for k in ("d_model", "hidden_size"):
        if getattr(cfg, k, None):
            return int(getattr(cfg, k))
    raise TypeError(f"cannot read the embedding width of {type(pipe.text_encoder).__name__}")


def check_pairing(transformer_config: Any, pipe, where: str = "the refiner transformer") -> None:
    """``ValueError`` when a transformer config cannot read the base VAE's latents or text encoder's
    embeddings (the wrong VAE/transformer pairing)."""
    g = transformer_config.get if hasattr(transformer_config, "get") else (lambda k, d=None: getattr(transformer_config, k, d))
    z = int(pipe.vae.config.z_dim)
    problems = []
    if int(g("in_channels")) != z:
        problems.append(f"in_channels {g('in_channels')} but the VAE's latents have z_dim {z} channels")
    if int(g("out_channels")) != z:
        problems.append(f"out_channels {g('out_channels')} but the VAE's latents have z_dim {z} channels")
    tw = text_width(pipe)
    if int(g("text_dim")) != tw:
        problems.append(f"text_dim {g('text_dim')} but the text encoder's embeddings are {tw} wide")
    if g("image_dim") is not None:
        problems.append("image_dim is set (an image-to-video transformer); a refiner reads latents and text only")
    if problems:
        raise ValueError(f"{where} does not fit the base pipeline's VAE/text encoder: " + "; ".join(problems))


def refiner_config(pipe, cfg: ModelConfig) -> dict:
    """The config of the transformer ``cfg`` trains: the base transformer's (or ``model.transformer``'s
    ``config.json``) with ``model.config`` overrides for ``"scratch"``. Reads no weights; ``ValueError``
    for an override the model does not take or a config that does not fit the base's VAE/text encoder."""
    if cfg.transformer is None:
        src = dict(pipe.transformer.config)
    else:
        if not os.path.isfile(os.path.join(cfg.transformer, "config.json")):
            raise FileNotFoundError(f"model.transformer {cfg.transformer!r} is not a WanTransformer3DModel folder")
        src = WanTransformer3DModel.load_config(cfg.transformer, local_files_only=True)
    tcfg = {k: v for k, v in src.items() if not k.startswith("_")}
    if cfg.init == "scratch":
        unknown = sorted(set(cfg.config) - set(tcfg))
        if unknown:
            raise ValueError(f"model.config has key(s) WanTransformer3DModel does not take: {', '.join(unknown)}")
        tcfg.update(cfg.config)
    check_pairing(tcfg, pipe)
    return tcfg


def build_transformer(pipe, cfg: ModelConfig):
    """The trainable transformer (float32, train mode) for ``cfg``; LoRA adapters added for ``"lora"``."""
    tcfg = refiner_config(pipe, cfg)
    if cfg.init == "scratch":
        torch.manual_seed(cfg.seed)
        model = WanTransformer3DModel(**tcfg)
    else:
        src = pipe.transformer if cfg.transformer is None else WanTransformer3DModel.from_pretrained(
            cfg.transformer, local_files_only=True)
        model = copy.deepcopy(src)
        if cfg.init == "lora":
            add_lora(model, cfg)

    Refiner(model).check_compatible(pipe.transformer)  # what surf_accel.patch will require of the export
    model.to(torch.float32).train()
    return model


def add_lora(model, cfg: ModelConfig) -> None:
    """Freeze ``model`` and add peft LoRA adapters (``cfg.lora``) to its attention/FFN linears; the
    adapters' B matrices start at zero (peft's default), so step 0 equals the base model."""
    try:
        from peft import LoraConfig  # optional (the train extra): only LoRA training needs it
    except ImportError as e:
        raise ImportError("model.init 'lora' needs peft: pip install 'surf_accel[train]'") from e
    model.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    model.add_adapter(LoraConfig(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, init_lora_weights=True,
                                 target_modules=list(cfg.lora.target_modules)))


def has_lora(model) -> bool:
    return bool(getattr(model, "_hf_peft_config_loaded", False))


def merged_copy(model):
    """A plain ``WanTransformer3DModel`` with ``model``'s weights, LoRA adapters merged into the base
    weights (``W + (alpha / r) B A``); a copy of ``model`` when it has none."""
    m = copy.deepcopy(model)
    if has_lora(m):
        m.fuse_lora(lora_scale=1.0)
        m.unload_lora()
    cfg = {k: v for k, v in dict(m.config).items() if not k.startswith("_")}
    out = WanTransformer3DModel(**cfg)
    out.load_state_dict(m.state_dict(), strict=True)
    return out.eval()


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def unwrap(model):
    """The module under DDP/FSDP wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def count_parameters(model, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)

