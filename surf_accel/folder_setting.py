"""A model folder's own SURF setting: ``surf_config.json`` beside ``model_index.json``.

``patch(pipe)`` and ``surf-accel generate`` use it when they are given no config: the ``SurfConfig``
fields measured for that model, the refiner to refine with (a path relative to the folder: a trained
``surf_accel.Refiner`` folder or a diffusers transformer folder of the family, refining
training-free), TeaCache's rescale for a model TeaCache published no coefficients for, and the
request ``generate`` makes when the command line does not say (size, frames, steps, guidance)::

    {"format_version": 1,
     "config": {"optimal_size": [64, 64], "switch_fraction": 0.24, ...},
     "refiner": "../refiner",
     "teacache": {"indicator": "temb", "coefficients": [1.0, 0.0]},
     "call": {"height": 128, "width": 128, "num_frames": 17, "num_inference_steps": 25, "guidance_scale": 4.0}}
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from surf_accel import files
from surf_accel.config import SurfConfig
from surf_accel.refiner import REFINER_FORMAT, Refiner

FILE_NAME = "surf_config.json"
FORMAT_VERSION = 1
CALL_KEYS = {"height": int, "width": int, "num_frames": int, "num_inference_steps": int, "guidance_scale": float}


@dataclass(frozen=True)
class FolderSetting:
    """A model folder's SURF setting (``read``)."""

    config: SurfConfig
    refiner: Optional[Path]  # absolute
    teacache: Optional[tuple[str, tuple[float, ...]]]  # (indicator, rescale coefficients)
    call: dict  # request defaults for generate (CALL_KEYS)
    path: Path  # the surf_config.json it came from


def model_folder(pipe) -> Optional[Path]:
    """The local folder ``pipe`` was loaded from (``DiffusionPipeline.from_pretrained``), if any."""
    name = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return Path(name) if isinstance(name, (str, os.PathLike)) and os.path.isdir(name) else None


def read(folder: str | os.PathLike) -> Optional[FolderSetting]:
    """The setting in ``folder/surf_config.json`` (``None`` without one); ``ValueError`` naming the file
    and the key for anything it cannot use."""
    path = Path(folder) / FILE_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read: {e}") from None
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {data.get('format_version') if isinstance(data, dict) else None!r} "
                         f"is not one this surf_accel reads ({FORMAT_VERSION})")
    unknown = set(data) - {"format_version", "config", "refiner", "teacache", "call"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    fields = data.get("config", {})
    known = {f.name for f in dataclasses.fields(SurfConfig)} - {"preview_attention"}
    if not isinstance(fields, dict) or set(fields) - known:
        raise ValueError(f"{path}: 'config' must map SurfConfig fields ({sorted(known)}) to values; "
                         f"unknown: {sorted(set(fields) - known) if isinstance(fields, dict) else fields!r}")
    try:
        config = SurfConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'config': {e}") from None
    refiner = data.get("refiner")
    if refiner is not None:
        refiner = (path.parent / refiner).resolve()
        if not (refiner / "config.json").is_file():
            raise ValueError(f"{path}: 'refiner' {data['refiner']!r} is no model folder ({refiner / 'config.json'} "
                             "is missing)")
    teacache = data.get("teacache")
    if teacache is not None:
        if (not isinstance(teacache, dict) or not isinstance(teacache.get("indicator"), str)
                or not isinstance(teacache.get("coefficients"), list)
                or not all(isinstance(c, (int, float)) for c in teacache["coefficients"])):
            raise ValueError(f"{path}: 'teacache' must be {{\"indicator\": str, \"coefficients\": [numbers]}}")
        teacache = (teacache["indicator"], tuple(float(c) for c in teacache["coefficients"]))
    call = data.get("call", {})
    if not isinstance(call, dict) or any(k not in CALL_KEYS or isinstance(v, bool) or not isinstance(v, (int, float))
                                         or (CALL_KEYS[k] is int and v != int(v)) for k, v in call.items()):
        raise ValueError(f"{path}: 'call' must map {sorted(CALL_KEYS)} to numbers")
    return FolderSetting(config, refiner, teacache, {k: CALL_KEYS[k](v) for k, v in call.items()}, path)


def write(folder: str | os.PathLike, config: SurfConfig, *, refiner: Optional[str] = None,
          teacache: Optional[tuple[str, tuple[float, ...]]] = None, call: Optional[dict] = None,
          overwrite: bool = False) -> Path:
    """Write ``folder/surf_config.json`` (``refiner`` relative to ``folder``); refuses to replace one
    unless ``overwrite``."""
    if config.preview_attention is not None:
        raise ValueError("a folder setting cannot carry preview_attention (a SparsePattern)")
    path = Path(folder) / FILE_NAME
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    # every field, defaults included: the setting stays what was measured if a default changes
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(SurfConfig) if f.name != "preview_attention"}
    data = {"format_version": FORMAT_VERSION, "config": fields}
    if refiner is not None:
        data["refiner"] = refiner
    if teacache is not None:
        data["teacache"] = {"indicator": teacache[0], "coefficients": list(teacache[1])}
    if call:
        data["call"] = dict(call)
    files.write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def load_refiner(folder: str | os.PathLike, *, dtype: torch.dtype, device: torch.device | str):
    """The model in ``folder``: a trained ``surf_accel.Refiner``, or a diffusers transformer (its
    ``_class_name``) for a training-free refine; ``ValueError`` naming the file for anything else."""
    import diffusers  # heavy: only when a refiner folder is loaded

    config_path = Path(folder) / "config.json"
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{config_path} cannot be read: {e}") from None
    if isinstance(cfg, dict) and cfg.get("format") == REFINER_FORMAT:
        return Refiner.from_pretrained(folder, torch_dtype=dtype).to(device)
    cls = getattr(diffusers, str(cfg.get("_class_name") if isinstance(cfg, dict) else None), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.ModelMixin)):
        raise ValueError(f"{config_path} is neither a surf_accel refiner nor a diffusers model config "
                         f"(_class_name {cfg.get('_class_name') if isinstance(cfg, dict) else None!r})")
    return cls.from_pretrained(folder, dtype=dtype).eval().to(device)
