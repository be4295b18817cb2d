"""The training run's configuration: one YAML or JSON file with every knob, validated on load.

Sections (each a frozen dataclass; unknown keys are refused so a typo never trains silently with a
default):

- ``base``: the base pipeline the refiner serves: ``"toy"`` (the shipped toy ``WanPipeline``) or a
  local diffusers Wan2.1 folder. Its VAE makes the latents, its text encoder the embeddings, its
  transformer is the optional initialisation and makes the base pairs; ``base_dtype`` is the
  transformer's and text encoder's dtype (``bfloat16`` halves a large base's memory in every process).
- ``data``: where HR clips come from (``toy`` world generator or a ``videos`` folder), their size
  and frame count, captions.
- ``pairs``: how ``z_lr`` is made from an HR clip (preview size, pixel degradations, handoff mode,
  latent noise).
- ``base_pairs``: optional pairs made by the base model itself (its SURF preview and its
  training-free refine of it), added to the clip pairs.
- ``model``: the refiner's architecture and initialisation (scratch / base / LoRA), windows, steps.
- ``objective``: the distribution of ``s`` on the straight path.
- ``train``: optimiser, batch, precision, EMA, curriculum, distribution strategy.
- ``checkpoint``, ``validation``, ``export``, ``log_every``.

``fingerprint()`` is what a resumed run must share with the checkpoint it resumes: every field that
changes the trajectory. Fields that do not (logging, validation, checkpoint cadence, export, the
run's total steps when the learning rate does not depend on it) may change between resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

S_DISTRIBUTIONS = ("uniform", "logit_normal", "inference_grid")
INIT_MODES = ("scratch", "base", "lora")
HANDOFFS = ("pixel", "latent")
COMPRESSIONS = ("none", "jpeg", "h264")
PRECISIONS = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "cosine")
STRATEGIES = ("ddp", "fsdp")
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
BASE_DTYPES = ("float32", "bfloat16")
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed surf_accel


class ConfigError(ValueError):
    """A training config that cannot be run, with the key that is wrong."""


def _range(name: str, v, lo: float = 0.0) -> tuple[float, float]:
    """A ``[min, max]`` range (a single number means a fixed value)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = (v, v)
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v)):
        raise ConfigError(f"{name} must be a number or [min, max], got {v!r}")
    a, b = float(v[0]), float(v[1])
    if not (lo <= a <= b):
        raise ConfigError(f"{name} must satisfy {lo} <= min <= max, got {v!r}")
    return (a, b)


@dataclass(frozen=True)
class DataConfig:
    """HR clips. ``source="toy"``: rendered by the toy world (``num_clips`` clips balanced over its
    labels, seeded); ``"videos"``: every ``.mp4`` under ``video_dir`` (sorted; files that cannot be
    read or are too short are skipped, with their reason in the data card). A video clip is
    ``num_frames`` frames ``frame_stride`` apart: from the video's first frame (``temporal_crop``
    ``"start"``) or from a window drawn anywhere in it (``"random"``); each frame resized to cover
    ``height x width`` times a factor drawn from ``scale`` (``[min, max]``, min >= 1; bilinear) and
    cut at the centre (``spatial_crop`` ``"center"``) or at a drawn place (``"random"``). Clip ``i``'s
    draws are seeded by the run's ``seed`` and ``i`` alone. The defaults: the first frames, scaled to
    just cover the target, centre crop. Captions for videos: a sidecar ``NAME.txt`` next to
    ``NAME.mp4`` or a ``captions.json`` ({file name: caption}) in ``video_dir``; a video without
    one is an error."""

    source: str = "toy"
    video_dir: Optional[str] = None
    num_clips: int = 256
    height: int = 128
    width: int = 128
    num_frames: int = 17
    val_clips: int = 4  # held out (after the training clips) for PSNR/SSIM to the HR clip
    max_sequence_length: int = 512  # WanPipeline's default: the refiner sees the same padded text
    cache_dir: Optional[str] = None  # default: <output_dir>/cache
    temporal_crop: str = "start"
    frame_stride: int = 1
    spatial_crop: str = "center"
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        if self.source not in ("toy", "videos"):
            raise ConfigError(f"data.source must be 'toy' or 'videos', got {self.source!r}")
        if self.source == "videos" and not self.video_dir:
            raise ConfigError("data.source 'videos' needs data.video_dir (a folder of .mp4 files)")
        for k in ("num_clips", "height", "width", "num_frames", "max_sequence_length"):
            if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1):
                raise ConfigError(f"data.{k} must be an int >= 1, got {getattr(self, k)!r}")
        if not (isinstance(self.val_clips, int) and self.val_clips >= 0):
            raise ConfigError(f"data.val_clips must be an int >= 0, got {self.val_clips!r}")
        if self.temporal_crop not in ("start", "random"):
            raise ConfigError(f"data.temporal_crop must be 'start' or 'random', got {self.temporal_crop!r}")
        if self.spatial_crop not in ("center", "random"):
            raise ConfigError(f"data.spatial_crop must be 'center' or 'random', got {self.spatial_crop!r}")
        if not (isinstance(self.frame_stride, int) and self.frame_stride >= 1):
            raise ConfigError(f"data.frame_stride must be an int >= 1, got {self.frame_stride!r}")
        object.__setattr__(self, "scale", _range("data.scale", self.scale, lo=1.0))
        cut = (self.temporal_crop, self.frame_stride, self.spatial_crop, self.scale)
        if self.source == "toy" and cut != ("start", 1, "center", (1.0, 1.0)):
            raise ConfigError("data.temporal_crop, frame_stride, spatial_crop and scale apply to source 'videos' "
                              "(the toy world renders each clip at the target size)")


@dataclass(frozen=True)
class PairsConfig:
    """How ``z_lr`` is made from an HR clip, as inference makes it from a preview (docs/design.md 1.3):
    the clip area-downsampled to ``preview_height x preview_width`` px, degraded in pixels (Gaussian
    blur sigma in preview pixels, additive Gaussian noise on [-1, 1], JPEG per frame or an H.264 round
    trip), VAE-encoded (that is a preview latent), brought to the target through
    ``surf_accel.refiner.handoff`` with ``handoff``/``latent_resize``, then Gaussian noise of std
    ``latent_noise`` (drawn per training step) added to ``z_lr``. Each range is sampled per clip."""

    preview_height: int = 32
    preview_width: int = 32
    handoff: str = "latent"
    latent_resize: str = "bilinear"
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    pixel_noise: tuple[float, float] = (0.0, 0.03)
    compression: str = "none"
    jpeg_quality: tuple[float, float] = (40.0, 90.0)
    h264_crf: tuple[float, float] = (20.0, 35.0)
    latent_noise: tuple[float, float] = (0.0, 0.1)
    degrade_prob: float = 0.8  # clips degraded at all (the rest keep the clean downsample)
    shard_size: int = 16  # pairs per shard of the pair store (training.pair_store)

    def __post_init__(self):
        for k in ("preview_height", "preview_width", "shard_size"):
            if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1):
                raise ConfigError(f"pairs.{k} must be an int >= 1")
        if self.handoff not in HANDOFFS:
            raise ConfigError(f"pairs.handoff must be one of {HANDOFFS}, got {self.handoff!r}")
        if self.latent_resize not in ("nearest", "bilinear"):
            raise ConfigError(f"pairs.latent_resize must be 'nearest' or 'bilinear', got {self.latent_resize!r}")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"pairs.compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        for k in ("blur_sigma", "pixel_noise", "latent_noise", "jpeg_quality", "h264_crf"):
            object.__setattr__(self, k, _range(f"pairs.{k}", getattr(self, k)))
        if not 0.0 <= self.degrade_prob <= 1.0:
            raise ConfigError(f"pairs.degrade_prob must be in [0, 1], got {self.degrade_prob!r}")


@dataclass(frozen=True)
class BasePairsConfig:
    """``num`` pairs made by the base pipeline (``surf_accel.training.base_pairs``): prompt ``i`` is
    the training captions' ``i mod len``, its generator seed ``seed + i`` (keep clear of evaluation
    seeds); ``surf`` is the training-free SurfConfig that makes them (as ``validation.surf``; its
    preview is what the trained refiner will refine), at ``num_inference_steps`` and
    ``guidance_scale``. The handoff of their ``z_lr`` is ``pairs.handoff``."""

    num: int = 0
    seed: int = 10_000
    surf: Any = "toy"
    num_inference_steps: int = 25
    guidance_scale: float = 4.0

    def __post_init__(self):
        if not (isinstance(self.num, int) and self.num >= 0):
            raise ConfigError(f"base_pairs.num must be an int >= 0, got {self.num!r}")
        if not (isinstance(self.num_inference_steps, int) and self.num_inference_steps >= 1):
            raise ConfigError(f"base_pairs.num_inference_steps must be an int >= 1, got {self.num_inference_steps!r}")


@dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 8.0
    # Wan's attention and FFN linears (diffusers names inside every block)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")

    def __post_init__(self):
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise ConfigError(f"model.lora.rank must be an int >= 1, got {self.rank!r}")
        object.__setattr__(self, "target_modules", tuple(self.target_modules))


@dataclass(frozen=True)
class ModelConfig:
    """``init``: ``"scratch"`` (random ``WanTransformer3DModel``: the base transformer's config with
    ``config`` overrides, e.g. fewer layers), ``"base"`` (a full copy of the base transformer, then
    fine-tuned), ``"lora"`` (the frozen base transformer plus peft LoRA adapters, merged on export).
    ``transformer``: a local ``WanTransformer3DModel`` folder to start from instead of the base's.
    ``window``: shifted-window size (tokens) used in training and written to the export's metadata
    (inference uses ``SurfConfig.window``). ``num_steps``: the exported refiner's Euler steps."""

    init: str = "scratch"
    config: dict = field(default_factory=dict)
    transformer: Optional[str] = None
    lora: LoraConfig = field(default_factory=LoraConfig)
    window: Optional[tuple[int, int, int]] = None
    num_steps: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.init not in INIT_MODES:
            raise ConfigError(f"model.init must be one of {INIT_MODES}, got {self.init!r}")
        if self.init != "scratch" and self.config:
            raise ConfigError(f"model.config overrides only apply to init 'scratch' (got init {self.init!r}): "
                              "a copied or LoRA-adapted base transformer keeps its architecture")
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", _build(LoraConfig, self.lora, "model.lora"))
        if self.window is not None:
            w = self.window
            if not (isinstance(w, (list, tuple)) and len(w) == 3 and all(isinstance(x, int) and x >= 1 for x in w)):
                raise ConfigError(f"model.window must be null or three ints >= 1 (tokens), got {w!r}")
            object.__setattr__(self, "window", tuple(w))
        if not (isinstance(self.num_steps, int) and self.num_steps >= 1):
            raise ConfigError(f"model.num_steps must be an int >= 1, got {self.num_steps!r}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """``s`` on the straight path ``x_s = (1 - s) z_hr + s z_lr``: ``"uniform"`` on [0, 1],
    ``"logit_normal"`` (``sigmoid(N(logit_mean, logit_std))``), or ``"inference_grid"``: uniformly one
    of the Euler steps' levels ``1, 1 - 1/n, ..., 1/n`` (``n = model.num_steps``), the only levels the
    refiner sees at inference."""

    s_distribution: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self):
        if self.s_distribution not in S_DISTRIBUTIONS:
            raise ConfigError(f"objective.s_distribution must be one of {S_DISTRIBUTIONS}, "
                              f"got {self.s_distribution!r}")
        if not self.logit_std > 0:
            raise ConfigError("objective.logit_std must be > 0")


@dataclass(frozen=True)
class Phase:
    """One curriculum phase: ``steps`` optimiser steps on clips of ``frames`` frames (a prefix of each
    clip: the Wan VAE is causal, so a clip's first ``1 + 4k`` frames encode to its latents' first
    ``1 + k`` frames), ``batch_size`` clips per process per micro-batch (``None``: train.batch_size)."""

    steps: int
    frames: Optional[int] = None
    batch_size: Optional[int] = None

    def __post_init__(self):
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ConfigError(f"train.curriculum steps must be ints >= 1, got {self.steps!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. ``batch_size`` is per process and micro-batch: the effective batch is
    ``batch_size x processes x grad_accum``. Without ``curriculum`` one phase of ``max_steps`` on
    whole clips; with it, ``max_steps`` is the sum of the phases (the paper: 21 frames for 1k steps,
    then 81 for 4k; AdamW lr 5e-5, batch 24). ``loader_workers``: processes reading the pair store
    for each training process (0: the training process reads it)."""

    max_steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    max_grad_norm: Optional[float] = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    ema_decay: Optional[float] = 0.999
    strategy: str = "ddp"
    curriculum: tuple[Phase, ...] = ()
    loader_workers: int = 2

    def __post_init__(self):
        if self.curriculum:
            phases = tuple(p if isinstance(p, Phase) else _build(Phase, p, "train.curriculum[]")
                           for p in self.curriculum)
            object.__setattr__(self, "curriculum", phases)
            total = sum(p.steps for p in phases)
            if self.max_steps != total:
                # max_steps is implied by the phases; a different explicit value is a contradiction
                object.__setattr__(self, "max_steps", total)
        for k in ("max_steps", "batch_size", "grad_accum"):
            if not (isinstance(getattr(self, k), int) and getattr(self, k) >= 1):
                raise ConfigError(f"train.{k} must be an int >= 1, got {getattr(self, k)!r}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"train.mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"train.strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not (isinstance(self.loader_workers, int) and self.loader_workers >= 0):
            raise ConfigError(f"train.loader_workers must be an int >= 0, got {self.loader_workers!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be null or in (0, 1), got {self.ema_decay!r}")

    def phases(self, default_frames: int) -> tuple[Phase, ...]:
        if not self.curriculum:
            return (Phase(self.max_steps, default_frames, self.batch_size),)
        return tuple(Phase(p.steps, p.frames or default_frames, p.batch_size or self.batch_size)
                     for p in self.curriculum)


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100  # optimiser steps between checkpoints
    keep: int = 2  # most recent checkpoints kept

    def __post_init__(self):
        if not (isinstance(self.every, int) and self.every >= 1 and isinstance(self.keep, int) and self.keep >= 1):
            raise ConfigError("checkpoint.every and checkpoint.keep must be ints >= 1")


@dataclass(frozen=True)
class ValidationConfig:
    """Every ``every`` steps (0: only at the end): the refiner (EMA weights) refines the held-out
    pairs' ``z_lr`` (PSNR/SSIM of the decoded result to the HR clip, and of ``z_lr`` itself as the
    floor); and, with ``prompts``, those prompts go through the full SURF path of the base pipeline
    (``surf``: SurfConfig fields, ``"toy"``: ``surf_accel.toyworld.surf_config`` with this run's
    handoff) with the toy world's signature metrics when the prompts are toy prompts."""

    every: int = 0
    prompts: tuple[str, ...] = ()
    seed: int = 0
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    surf: Any = "toy"

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if not (isinstance(self.every, int) and self.every >= 0):
            raise ConfigError("validation.every must be an int >= 0")


@dataclass(frozen=True)
class ExportConfig:
    dtype: str = "float16"
    dir: Optional[str] = None  # default: <output_dir>/refiner
    use_ema: bool = True

    def __post_init__(self):
        if self.dtype not in EXPORT_DTYPES:
            raise ConfigError(f"export.dtype must be one of {EXPORT_DTYPES}, got {self.dtype!r}")


@dataclass(frozen=True)
class RefinerTrainingConfig:
    """The whole run (see the module docstring)."""

    output_dir: str
    base: str = "toy"
    base_dtype: str = "float32"  # the base transformer's and text encoder's (its VAE stays float32)
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    base_pairs: BasePairsConfig = field(default_factory=BasePairsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    log_every: int = 10

    def __post_init__(self):
        if self.base_dtype not in BASE_DTYPES:
            raise ConfigError(f"base_dtype must be one of {BASE_DTYPES}, got {self.base_dtype!r}")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    # keys that may differ between a checkpoint and the run resuming it
    RESUMABLE_CHANGES = ("output_dir", "log_every", "checkpoint", "validation", "export", "data.cache_dir",
                         "pairs.shard_size", "train.loader_workers")

    def fingerprint_dict(self) -> dict:
        d = self.to_dict()
        for key in self.RESUMABLE_CHANGES:
            parts = key.split(".")
            node = d
            for p in parts[:-1]:
                node = node[p]
            node.pop(parts[-1], None)
        if self.train.lr_schedule == "constant" and not self.train.curriculum:
            d["train"].pop("max_steps")  # a constant-lr run may be extended
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.fingerprint_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir or os.path.join(self.output_dir, "cache"))

    @property
    def export_dir(self) -> Path:
        return Path(self.export.dir or os.path.join(self.output_dir, "refiner"))

    def check_paths(self) -> None:
        """``ConfigError`` where the run would write inside the installed package: a reinstall would lose
        it, and an export there replaces the package's own files (the shipped toy refiner)."""
        for key, path in (("output_dir", self.output_dir), ("data.cache_dir", self.cache_dir),
                          ("export.dir", self.export_dir)):
            refuse_package_path(key, path)


def refuse_package_path(key: str, path: str | os.PathLike) -> None:
    """``ConfigError`` naming ``key`` where ``path`` is inside the installed surf_accel package."""
    resolved = Path(path).resolve()
    if resolved == PACKAGE_DIR or PACKAGE_DIR in resolved.parents:
        raise ConfigError(f"{key} {path} is inside the installed surf_accel package ({PACKAGE_DIR}); training never "
                          "writes there: set it to a folder of your own")


def _build(cls, d: Any, where: str):
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


SECTIONS = {"data": DataConfig, "pairs": PairsConfig, "base_pairs": BasePairsConfig, "model": ModelConfig, "objective": ObjectiveConfig,
            "train": TrainConfig, "checkpoint": CheckpointConfig, "validation": ValidationConfig,
            "export": ExportConfig}


def config_from_dict(d: dict, *, base_dir: Optional[str] = None) -> RefinerTrainingConfig:
    """Build and validate a config; relative paths are taken relative to ``base_dir`` (the config
    file's folder)."""
    if not isinstance(d, dict):
        raise ConfigError("a training config must be a mapping")
    d = dict(d)
    if "output_dir" not in d:
        raise ConfigError("the training config needs output_dir (where checkpoints, caches and the export go)")
    kwargs = {}
    for k, v in d.items():
        if k in SECTIONS:
            kwargs[k] = _build(SECTIONS[k], v or {}, k)
        else:
            kwargs[k] = v

    def rel(p):
        if p is None:
            return None
        p = os.path.expanduser(os.path.expandvars(p))  # $VARS and ~ in paths
        if "$" in p:
            raise ConfigError(f"path {p!r} names an environment variable that is not set")
        return p if os.path.isabs(p) or base_dir is None else os.path.normpath(os.path.join(base_dir, p))

    cfg = _build(RefinerTrainingConfig, kwargs, "the training config")
    changes = {"output_dir": rel(cfg.output_dir)}
    if cfg.base != "toy":
        changes["base"] = rel(cfg.base)
    cfg = dataclasses.replace(cfg, **changes)
    if cfg.data.video_dir or cfg.data.cache_dir:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, video_dir=rel(cfg.data.video_dir),
                                                                cache_dir=rel(cfg.data.cache_dir)))
    if cfg.model.transformer:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, transformer=rel(cfg.model.transformer)))
    if cfg.export.dir:
        cfg = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, dir=rel(cfg.export.dir)))
    return cfg


def load_config(path: str | os.PathLike) -> RefinerTrainingConfig:
    """Read a YAML (``.yaml``/``.yml``) or JSON config file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml  # optional (the train extra): only YAML configs need it

        d = yaml.safe_load(text)
    else:
        d = json.loads(text)
    return config_from_dict(d, base_dir=str(path.parent.resolve()))
