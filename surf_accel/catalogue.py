"""The cost model's catalogue: the published checkpoints and per-variant defaults every registered
family declares (``surf-accel estimate --model``), and ``estimate`` by catalogue name."""

from __future__ import annotations

from typing import Optional

from surf_accel import registry
from surf_accel.config import SurfConfig
from surf_accel.cost_model import Estimate, FamilyDefaults, HunyuanVideoSpec, TransformerSpec, VaeSpec, estimate_plan
from surf_accel.planner import FamilySpec, Request, SchedulerSpec, plan_stages


def models() -> dict:
    """Catalogue name -> transformer spec, over every registered family."""
    return {name: spec for fam in registry.families() for name, spec in fam.models.items()}


def family_defaults() -> dict[str, FamilyDefaults]:
    """Variant name (a spec's ``family``) -> what ``estimate`` assumes for it."""
    return {name: d for fam in registry.families() for name, d in fam.defaults.items()}


def estimate(model: str | TransformerSpec | HunyuanVideoSpec, height: int, width: int, frames: int,
             config: Optional[SurfConfig] = None, *, steps: int = 50, guidance: Optional[bool] = None,
             refiner: Optional[str | TransformerSpec | HunyuanVideoSpec] = None,
             refiner_transformer: Optional[str | TransformerSpec | HunyuanVideoSpec] = None,
             vae: Optional[VaeSpec] = None, family: Optional[FamilySpec] = None,
             scheduler: Optional[SchedulerSpec] = None, decode_output: bool = True, cp_degree: int = 1) -> Estimate:
    """Baseline (``steps`` at the request's size) vs SURF (``config``) FLOPs.

    ``None`` for ``config``, ``guidance``, ``vae``, ``family``, ``scheduler``: the model family's
    defaults (``family_defaults()``: Wan2.1 with CFG and the ``"paper"`` preset, HunyuanVideo with one pass per
    step and the ``"hunyuan-paper"`` preset). ``guidance=True`` counts two passes per step.
    ``refiner=None``: training-free refine with the base model (guidance as the call);
    a model name or spec: a trained refiner of that size (no guidance, docs/design.md 1.3).
    ``refiner_transformer``: a training-free refine by another transformer of the family (a model
    name or spec; its guidance passes counted as the base's), e.g. Wan2.1-1.3B refining Wan2.1-14B.
    ``decode_output=False``: leave out the final VAE decode on both sides (``output_type="latent"``).
    ``cp_degree``: the plan for context parallelism over that many ranks (every stage's tokens split
    evenly: the preview snapped, a request that cannot split refused, as ``planner.plan_stages``).
    """
    catalogue = models()
    spec = _spec(catalogue, model, "model")
    if refiner is not None and refiner_transformer is not None:
        raise ValueError("give a trained refiner or a refiner transformer, not both")
    ref_spec = _spec(catalogue, refiner if refiner is not None else refiner_transformer, "refiner model")
    defaults = family_defaults()[spec.family]
    family = family or defaults.family
    scheduler = scheduler or defaults.scheduler
    config = config or SurfConfig.preset(defaults.preset)
    passes = 2 if (defaults.cfg if guidance is None else guidance) else 1
    plan = plan_stages(Request(height, width, frames, steps), family, scheduler, config,
                       trained_refiner=refiner is not None, refiner_transformer=refiner_transformer is not None,
                       cp_degree=cp_degree)
    return estimate_plan(plan, spec, passes=passes, vae=vae or defaults.vae, refiner=ref_spec,
                         decode_output=decode_output)


def _spec(catalogue: dict, model, what: str):
    """A catalogue name's spec, a spec itself, or ``None``."""
    if isinstance(model, str):
        if model not in catalogue:
            raise ValueError(f"unknown {what} {model!r}; known: {sorted(catalogue)}")
        return catalogue[model]
    return model


def __getattr__(name: str):
    # MODELS and FAMILIES: the catalogue as dicts, read when asked (a family registered later is in them)
    if name == "MODELS":
        return models()
    if name == "FAMILIES":
        return family_defaults()
    raise AttributeError(f"module 'surf_accel.catalogue' has no attribute {name!r}")
