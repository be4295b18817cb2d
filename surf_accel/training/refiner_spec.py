"""The cost model's view of a trained refiner (``surf-accel estimate --refiner PATH``): from a refiner
folder, a transformer config, or the refiner training config that would train it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional

from surf_accel.cost_model import TransformerSpec
from surf_accel.refiner import CONFIG_NAME, REFINER_FORMAT
from surf_accel.toyworld import PIPELINE_DIR
from surf_accel.training.config import load_config


@dataclass(frozen=True)
class RefinerInfo:
    """A trained refiner as the cost model sees it: its transformer's shape, its own Euler step count
    and the shifted windows it was trained with (``None`` where the source does not say)."""

    spec: TransformerSpec
    num_steps: Optional[int] = None
    window: Optional[tuple[int, int, int]] = None
    source: str = ""


def _base_transformer_config(base: str) -> dict:
    if base == "toy":
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
