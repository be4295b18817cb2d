"""The toy world: a procedural video world and a tiny trained Wan2.1-architecture model of it.

The shipped model is a genuine diffusers ``WanPipeline`` (tiny UMT5 text encoder, word-level tokenizer,
tiny ``AutoencoderKLWan`` with 4x spatial / 4x temporal compression, tiny ``WanTransformer3DModel``,
UniPC flow scheduler) saved in fp16 safetensors under ``surf_accel/toyworld/pipeline``. It was
trained mainly at its optimal resolution (64x64, the toy's "480p") and also at the target
resolution (128x128, the toy's "720p"); 32x32 is the SURF preview size. See ``TRAINING.md``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from surf_accel.config import SurfConfig
from surf_accel.refiner import Refiner

from .world import COLOURS, DIRECTIONS, SHAPES, ClipSpec, all_label_combinations, parse_prompt, prompt_for, sample_specs

PIPELINE_DIR = Path(__file__).resolve().parent / "pipeline"
REFINER_DIR = Path(__file__).resolve().parent / "refiner"  # the trained toy refiner (TRAINING.md)
# the sibling: a smaller WanTransformer3DModel trained on the same world, the training-free refiner (TRAINING.md)
SIBLING_DIR = Path(__file__).resolve().parent / "sibling"

OPTIMAL_SIZE = 64   # the DiT's main training resolution (height = width)
TARGET_SIZE = 128   # also trained there (fewer steps) so the base model can render the baseline
PREVIEW_SIZE = 32   # SURF's low-resolution preview (2x down per spatial axis)
NUM_FRAMES = 17     # 5 latent frames with the 4x temporal VAE
FLOW_SHIFT = {PREVIEW_SIZE: 2.0, OPTIMAL_SIZE: 3.0, TARGET_SIZE: 5.0}  # training shifts per size
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 4.0
REFINE_START = 0.7  # indistinguishable from 0.5 in benchmarks/results/signature.md (0.3 was worse before)
REFINE_WINDOW = (2, 1000, 1000)  # 2 of the 5 latent frames, whole H and W: the paper's temporal windows
# TeaCache on the toy, which TeaCache published no coefficients for: time-embedding indicator, identity rescale
# (also in the pipeline folder's surf_config.json, which `surf-accel generate --cache teacache:T` reads)
TEACACHE_FIT = ("temb", (1.0, 0.0))

# The fixed evaluation prompt set: every (colour, shape, direction) combination once.
EVAL_PROMPTS: tuple[str, ...] = tuple(prompt_for(c, s, d) for c, s, d in all_label_combinations())
EVAL_SEEDS: tuple[int, ...] = (0, 1)
# A short set for tests and demos.
DEMO_PROMPTS: tuple[str, ...] = ("a red circle moving left", "a blue square moving down",
                                 "a yellow circle moving up", "a green square moving right")


def surf_config(**changes):
    """The SURF setting for the toy model at ``TARGET_SIZE``: the world's own sizes and training shifts
    (optimal 64 px, preview 32 px, target 128 px), steps following the call (all of them as the
    preview, switching after 24%: 6 of the default 25; refine for 20%: 5), the paper's reshift, latent
    handoff, training-free refine from s* = 0.7 with guidance and temporal windows of 2 latent frames
    (whole H and W). Each choice follows ``benchmarks/results/signature.md`` (96 videos a row, 95%
    intervals): the paper's reshift and additive_low are indistinguishable there and the consistent one
    loses the layout; latent and pixel handoffs, fresh and predicted re-noise, refine_start 0.5 and
    0.7, and windows against dense refine attention are indistinguishable, so the cheaper (latent,
    windows) or simpler (fresh) is taken; the refine keeps guidance (without it colour falls outside
    the base model's interval). ``changes`` override fields (``SurfConfig.replace``)."""
    cfg = SurfConfig(optimal_size=(OPTIMAL_SIZE, OPTIMAL_SIZE), preview_fraction=1.0, switch_fraction=0.24,
                     downsample=OPTIMAL_SIZE // PREVIEW_SIZE, reshift="paper", handoff="latent",
                     refine_fraction=0.2, refine_start=REFINE_START, window=REFINE_WINDOW,
                     shifts=(FLOW_SHIFT[OPTIMAL_SIZE], FLOW_SHIFT[PREVIEW_SIZE], FLOW_SHIFT[TARGET_SIZE]),
                     name="toy")
    return cfg.replace(**changes) if changes else cfg


def pipeline_available() -> bool:
    """Whether the trained pipeline folder is present in the package."""
    return (PIPELINE_DIR / "model_index.json").exists()


def load_pipeline(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", path: str | Path | None = None):
    """Load the shipped toy ``WanPipeline`` offline (weights are stored in fp16; ``dtype`` is the
    compute dtype, float32 by default). The progress bar is left on; disable it with
    ``pipe.set_progress_bar_config(disable=True)``."""
    from diffusers import WanPipeline  # heavy: the toy world loads without diffusers

    path = Path(path) if path is not None else PIPELINE_DIR
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(
            f"no toy pipeline at {path}; train one with `python -m surf_accel.toyworld.train all` "
            "(see surf_accel/toyworld/TRAINING.md)")
    pipe = WanPipeline.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    return pipe.to(device)


def load_refiner(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", path: str | Path | None = None):
    """Load the shipped trained toy ``Refiner`` (fp16 weights, ``dtype`` compute); use it with
    ``surf_accel.patch(pipe, surf_config(), refiner=load_refiner())``."""
    path = Path(path) if path is not None else REFINER_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no toy refiner at {path}; train one with `surf-accel train-refiner "
                                "surf_accel/toyworld/refiner/train.yaml` (see surf_accel/toyworld/TRAINING.md)")
    return Refiner.from_pretrained(path, torch_dtype=dtype).to(device)


def load_sibling(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 path: str | Path | None = None):
    """Load the shipped toy sibling, a ``WanTransformer3DModel`` of the toy's family at about a fifth of
    its layers x width (fp16 weights, ``dtype`` compute); it refines the toy's preview training-free
    with ``surf_accel.patch(pipe, surf_config(), refiner=load_sibling())``."""
    from diffusers import WanTransformer3DModel  # heavy: the toy world loads without diffusers

    path = Path(path) if path is not None else SIBLING_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no toy sibling at {path}; train one with `python -m surf_accel.toyworld.train "
                                "sibling` (see surf_accel/toyworld/TRAINING.md)")
    return WanTransformer3DModel.from_pretrained(path, dtype=dtype).eval().to(device)


__all__ = [
    "COLOURS", "ClipSpec", "DEFAULT_GUIDANCE", "DEFAULT_STEPS", "DEMO_PROMPTS", "DIRECTIONS", "EVAL_PROMPTS",
    "EVAL_SEEDS", "FLOW_SHIFT", "NUM_FRAMES", "OPTIMAL_SIZE", "PIPELINE_DIR", "PREVIEW_SIZE", "REFINER_DIR",
    "REFINE_WINDOW", "SHAPES", "SIBLING_DIR", "TARGET_SIZE", "TEACACHE_FIT", "all_label_combinations",
    "load_pipeline", "load_refiner", "load_sibling", "parse_prompt", "pipeline_available", "prompt_for",
    "sample_specs", "surf_config",
]
