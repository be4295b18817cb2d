"""The refine stage (docs/design.md 1.3): handoff of the preview to the target size, the training-free
refiner's start, and the trained-refiner slot.

Handoff builds ``z_lr``, the preview at the target latent size:

- ``"pixel"`` (paper): VAE-decode the preview, resize the frames (bilinear per frame, frames kept),
  VAE-encode (the distribution's mode).
- ``"latent"``: resize the latent (nearest or bilinear). With an integer factor and a training-free
  refiner the resize and the noise mix run as one fused ``upsample_mix``.

Refiners:

- Training-free: the base transformer (or a user-given transformer of the same family) denoises
  ``(1 - s*) z_lr + s* eps`` from ``s*`` to 0 at the target size (SDEdit-style) with the pipeline's
  scheduler class and classifier-free guidance.
- Trained (``Refiner``): a Wan-family DiT trained on the straight path
  ``x_s = (1 - s) z_hr + s z_lr``; inference starts at ``s = 1`` from ``z_lr`` itself (no noise) and
  takes plain Euler steps, no guidance. A folder holds ``config.json`` and
  ``diffusion_pytorch_model.safetensors``, written as a whole (``surf_accel.files``); ``from_pretrained``
  refuses, naming the file, a checkpoint of another architecture or format version, or with damaged,
  mismatching or non-finite weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from surf_accel import files, ops

REFINER_FORMAT = "surf_accel.Refiner"
REFINER_FORMAT_VERSION = 1
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"
SUPPORTED_ARCHITECTURES = ("WanTransformer3DModel",)


def _integer_factor(src: tuple[int, int], dst: tuple[int, int]) -> Optional[int]:
    if dst[0] % src[0] == 0 and dst[1] % src[1] == 0 and dst[0] // src[0] == dst[1] // src[1]:
        return dst[0] // src[0]
    return None


def resize_latent(z: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``(B, C, T, H, W)`` over H, W; ``mode`` is ``"nearest"`` or ``"bilinear"``."""
    if tuple(z.shape[-2:]) == tuple(size):
        return z
    t = z.shape[2]
    if mode == "nearest":
        return F.interpolate(z, size=(t, *size), mode="nearest")
    return F.interpolate(z, size=(t, *size), mode="trilinear", align_corners=False)


def handoff(pipe, adapter, preview: torch.Tensor, stage, config, noise: Optional[torch.Tensor],
            sigma: float) -> torch.Tensor:
    """The refine stage's start latent at ``stage``'s size.

    ``noise`` and ``sigma`` give the training-free start ``(1 - sigma) * z_lr + sigma * noise``;
    ``noise=None`` returns ``z_lr`` itself (the trained refiner's start, ``s = 1``).
    """
    dst = tuple(stage.latent_size[1:])
    src = tuple(preview.shape[-2:])
    if config.handoff == "pixel":
        video = adapter.decode(pipe, preview).to(torch.float32)
        if (video.shape[-2], video.shape[-1]) != (stage.height, stage.width):
            video = F.interpolate(video, size=(video.shape[2], stage.height, stage.width), mode="trilinear",
                                  align_corners=False).clamp_(-1.0, 1.0)
        z_lr = adapter.encode(pipe, video).to(preview.device, torch.float32)
        if tuple(z_lr.shape[2:]) != tuple(stage.latent_size):
            raise RuntimeError(f"pixel handoff produced latents {tuple(z_lr.shape[2:])}, expected {stage.latent_size}")
    else:
        factor = _integer_factor(src, dst)
        if factor is not None and noise is not None:
            return ops.upsample_mix(preview.to(torch.float32).contiguous(), noise, sigma, factor,
                                    config.latent_resize)
        z_lr = resize_latent(preview.to(torch.float32), dst, config.latent_resize)
    if noise is None:
        return z_lr
    return ops.upsample_mix(z_lr.contiguous(), noise, sigma, 1)


# ---------------------------------------------------------------------------- trained refiner
class Refiner:
    """A trained refiner: a Wan-family DiT predicting the velocity ``z_lr - z_hr`` (docs/design.md 1.3).

    ``Refiner(transformer)`` wraps a ``WanTransformer3DModel``; ``num_steps`` is its number of Euler
    steps (paper: 10), used unless ``SurfConfig.refine_steps`` is set (an explicit count wins; the
    call's ``num_inference_steps`` does not change it: a trained refiner's steps are its own).
    Save and load with ``save_pretrained``/``from_pretrained``.
    """

    def __init__(self, transformer, num_steps: int = 10, metadata: Optional[dict] = None):
        arch = type(transformer).__name__
        if arch not in SUPPORTED_ARCHITECTURES:
            raise TypeError(f"a Refiner wraps one of {SUPPORTED_ARCHITECTURES}, got {arch}")
        if not (isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        self.transformer = transformer
        self.num_steps = num_steps
        self.metadata = dict(metadata or {})

    @property
    def architecture(self) -> str:
        return type(self.transformer).__name__

    @property
    def config(self):
        return self.transformer.config

    def to(self, *args, **kwargs) -> "Refiner":
        self.transformer.to(*args, **kwargs)
        return self

    @classmethod
    def random(cls, transformer_config: dict, num_steps: int = 10, seed: int = 0) -> "Refiner":
        """A refiner with random weights (tests; the untrained starting point of training)."""
        from diffusers import WanTransformer3DModel

        torch.manual_seed(seed)
        return cls(WanTransformer3DModel(**transformer_config).eval(), num_steps=num_steps)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Write ``config.json`` and the weights as one folder (``files.write_folder``): a failure leaves
        the folder's previous refiner loadable, and a folder holding other files is refused, not emptied."""
        tcfg = {k: v for k, v in dict(self.transformer.config).items() if not k.startswith("_")}
        cfg = {"format": REFINER_FORMAT, "format_version": REFINER_FORMAT_VERSION, "architecture": self.architecture,
               "transformer_config": tcfg, "num_steps": self.num_steps, "metadata": self.metadata}

        def write(tmp: Path) -> None:
            files.write_json(tmp / CONFIG_NAME, cfg, indent=2, sort_keys=True, default=list)
            files.write_safetensors(tmp / WEIGHTS_NAME, self.transformer.state_dict(), {"format": REFINER_FORMAT})

        files.write_folder(folder, write)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, *, torch_dtype: Optional[torch.dtype] = None,
                        device: Any = None) -> "Refiner":
        """Load a ``save_pretrained`` folder. ``ValueError`` naming the file (and the key) for a config that
        is not valid JSON, of another format or format version, without ``transformer_config``, with a
        ``num_steps`` that is no positive integer; for weights that cannot be read, do not fit the
        architecture or are not finite (a NaN would make every video NaN)."""
        from safetensors.torch import load_file

        cfg_path = os.path.join(folder, CONFIG_NAME)
        w_path = os.path.join(folder, WEIGHTS_NAME)
        for p in (cfg_path, w_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"not a surf_accel refiner folder: {p} is missing")
        cfg = _read_config(cfg_path)
        arch = cfg["architecture"]
        from diffusers import WanTransformer3DModel

        try:
            transformer = WanTransformer3DModel.from_config(cfg["transformer_config"])
        except Exception as e:  # noqa: BLE001  (a config the class cannot build is the wrong architecture)
            raise ValueError(f"{cfg_path}: its transformer_config does not build a {arch}: {e}") from e
        try:
            state = load_file(w_path)
        except Exception as e:  # noqa: BLE001  (safetensors raises its own error type for a damaged file)
            raise ValueError(f"{w_path} cannot be read ({e}): the refiner's weights are damaged or truncated") from None
        expected = transformer.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
        not_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
        if missing or unexpected or wrong:
            parts = [f"{len(missing)} missing ({_head(missing)})" if missing else "",
                     f"{len(unexpected)} unexpected ({_head(unexpected)})" if unexpected else "",
                     f"{len(wrong)} with other shapes ({_head(wrong)})" if wrong else ""]
            raise ValueError(f"{w_path} does not match the {arch} {cfg_path} describes: "
                             + "; ".join(p for p in parts if p) + ": wrong architecture or corrupt checkpoint")
        if not_finite:
            raise ValueError(f"{w_path}: {len(not_finite)} weight tensor(s) hold NaN or infinite values "
                             f"({_head(not_finite)}); the refiner would make non-finite videos")
        transformer.load_state_dict(state, strict=True)
        transformer.eval()
        # a cast to the dtype it already has is skipped: diffusers warns on any cast of its float32-kept modules
        if torch_dtype is not None and torch_dtype != transformer.dtype:
            transformer.to(dtype=torch_dtype)
        if device is not None:
            transformer.to(device=device)
        return cls(transformer, num_steps=cfg["num_steps"], metadata=cfg.get("metadata") or {})

    def setting_mismatches(self, config) -> list[str]:
        """Where ``config`` (a ``SurfConfig``) hands off or attends differently from how this refiner
        was trained (its ``metadata["inference"]``, written by ``surf_accel.training.export``): its
        ``z_lr`` or its attention would then not be the kind it learned from. Empty when the metadata
        says nothing."""
        trained = self.metadata.get("inference") or {}
        used = {"handoff": config.handoff, "latent_resize": config.latent_resize,
                "window": None if config.window is None else list(config.window)}
        out = []
        for key, value in used.items():
            if key not in trained or (key == "latent_resize" and config.handoff == "pixel"):
                continue
            want = None if trained[key] is None else (list(trained[key]) if key == "window" else trained[key])
            if want != value:
                out.append(f"the refiner was trained with {key}={want!r} but SurfConfig.{key} is {value!r}; "
                           f"set SurfConfig.{key}={want!r} (SurfConfig.replace) unless this is deliberate")
        return out

    def check_compatible(self, base_transformer) -> None:
        """The refiner must read the base model's latents and text embeddings."""
        rc, bc = self.transformer.config, base_transformer.config
        problems = []
        if rc.out_channels != bc.out_channels:
            problems.append(f"out_channels {rc.out_channels} vs the base model's {bc.out_channels}")
        if rc.text_dim != bc.text_dim:
            problems.append(f"text_dim {rc.text_dim} vs the base model's {bc.text_dim}")
        if tuple(rc.patch_size) != tuple(bc.patch_size):
            problems.append(f"patch_size {tuple(rc.patch_size)} vs the base model's {tuple(bc.patch_size)}")
        if rc.in_channels not in (bc.out_channels, bc.in_channels):
            problems.append(f"in_channels {rc.in_channels} matches neither the latents ({bc.out_channels}) nor "
                            f"the base model's input ({bc.in_channels})")
        if problems:
            raise ValueError("this refiner does not fit the pipeline: " + "; ".join(problems))


def _head(keys: list[str]) -> str:
    return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")


def _read_config(path: str) -> dict:
    """A refiner's ``config.json``, checked key by key; ``ValueError`` naming the file and the key."""
    try:
        with open(path) as f:
            cfg = json.load(f)
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the refiner's config is damaged") from None
    if not isinstance(cfg, dict) or cfg.get("format") != REFINER_FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{path} is not a surf_accel refiner config (format {found!r}, expected {REFINER_FORMAT!r})")
    version = cfg.get("format_version")
    if version != REFINER_FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(f"{path}: format_version {version!r} is not one this surf_accel reads "
                         f"({REFINER_FORMAT_VERSION}); it was written by another version")
    if cfg.get("architecture") not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{path}: architecture {cfg.get('architecture')!r}; supported: {SUPPORTED_ARCHITECTURES}")
    if not isinstance(cfg.get("transformer_config"), dict):
        raise ValueError(f"{path} has no 'transformer_config' mapping (the {cfg['architecture']}'s config)")
    steps = cfg.setdefault("num_steps", 10)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{path}: num_steps must be a positive integer (the refiner's Euler steps), got {steps!r}")
    return cfg


def check_refiner_transformer(transformer, base_transformer) -> None:
    """A user-given transformer for the training-free refiner must be of the base model's family."""
    if type(transformer).__name__ not in SUPPORTED_ARCHITECTURES:
        raise TypeError(f"refiner must be a surf_accel.Refiner or one of {SUPPORTED_ARCHITECTURES} of the "
                        f"pipeline's family, got {type(transformer).__name__}")
    rc, bc = transformer.config, base_transformer.config
    for key in ("in_channels", "out_channels", "text_dim", "patch_size", "image_dim"):
        a, b = getattr(rc, key, None), getattr(bc, key, None)
        if (tuple(a) if isinstance(a, (list, tuple)) else a) != (tuple(b) if isinstance(b, (list, tuple)) else b):
            raise ValueError(f"refiner transformer has {key}={a!r} but the pipeline's transformer has {b!r}; "
                             "a training-free refiner must be of the same family and interface")
