"""What diffusers' context parallelism on a pipeline's transformers means for SURF's plan
(docs/context_parallel.md): how many equal shards each stage model's token sequence is cut into,
and the setups SURF refuses before any model runs.

``transformer.enable_parallelism(config=ContextParallelConfig(...))`` records a ``ParallelConfig`` on
the model (``_parallel_config``) and hooks its ``_cp_plan``: the video token sequence is split over
``ring_degree * ulysses_degree`` ranks into equal shards (``EquipartitionSharder``), unless
``ulysses_anything`` / ``ring_anything`` shard unevenly.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.distributed as dist

from surf_accel.refiner import Refiner


def cp_config(model) -> Optional[Any]:
    """The ``ContextParallelConfig`` diffusers recorded on ``model`` (a torch.compile wrapper's
    module's), or ``None``."""
    model = getattr(model, "_orig_mod", model)
    parallel = getattr(model, "_parallel_config", None)
    return getattr(parallel, "context_parallel_config", None)


def split_degree(model) -> int:
    """Into how many equal shards ``model``'s token sequence is cut: 1 without context parallelism or
    with an uneven ("anything") split, which any token count suits."""
    cfg = cp_config(model)
    if cfg is None or cfg.ulysses_anything or cfg.ring_anything:
        return 1
    return cfg.ring_degree * cfg.ulysses_degree


def check_model(model) -> None:
    """Refuse, before any compute, a context-parallel ``model`` SURF cannot plan for: one without
    diffusers' own ``_cp_plan`` (the split is then the caller's, unknown to the planner: HunyuanVideo
    and HunyuanVideo-1.5 have none in diffusers 0.42.1), or a Ulysses degree its heads do not divide."""
    cfg = cp_config(model)
    if cfg is None:
        return
    model = getattr(model, "_orig_mod", model)
    name = type(model).__name__
    if getattr(type(model), "_cp_plan", None) is None:
        raise NotImplementedError(
            f"{name} is context-parallel, but diffusers has no context-parallel plan (_cp_plan) for it: the token "
            "split is the caller's own cp_plan, which SURF cannot plan stages for. SURF runs under context "
            "parallelism on the transformers diffusers plans for (Wan2.1, Wan2.2)")
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if cfg.ulysses_degree > 1 and not cfg.ulysses_anything and heads is not None and heads % cfg.ulysses_degree:
        raise ValueError(
            f"{name} has {heads} attention heads, which Ulysses degree {cfg.ulysses_degree} does not divide (each "
            "rank attends with an equal share of the heads); use a Ulysses degree that divides the heads, "
            "ContextParallelConfig(ulysses_anything=True), or ring attention without windows")


def stage_degrees(pipe, refiner=None) -> dict[str, int]:
    """Each ``Stage.model``'s split degree for ``planner.plan_stages(cp_degree=...)``, after
    ``check_model`` on every transformer the stages can run. The base stages may run any of the
    pipeline's transformers (Wan2.2's two experts), so every one's degree must divide their tokens."""
    base = [m for name, m in pipe.components.items() if name.startswith("transformer") and m is not None]
    models = {"base": base}
    if isinstance(refiner, Refiner):
        models["trained_refiner"] = [refiner.transformer]
    elif refiner is not None:
        models["refiner_transformer"] = [refiner]
    degrees = {}
    for key, ms in models.items():
        for m in ms:
            check_model(m)
        degrees[key] = math.lcm(*(split_degree(m) for m in ms)) if ms else 1
    return degrees


def relative_l1(current: torch.Tensor, previous: torch.Tensor, model) -> float:
    """``mean|current - previous| / mean|previous|``, the caches' change indicator, over the whole
    token sequence. Under context parallelism a hidden-state indicator is each rank's own shard, and
    ranks judging their shards could skip different blocks, then wait for ever on each other's
    all-to-all: the sums are all-reduced over the context-parallel ranks, so every rank takes the
    decision one process would (up to summation order)."""
    cfg = cp_config(model)
    if cfg is None:
        return ((current - previous).abs().mean() / previous.abs().mean()).item()
    sums = torch.stack([(current - previous).abs().float().sum(), previous.abs().float().sum()])
    dist.all_reduce(sums, group=cfg._flattened_mesh.get_group())
    return (sums[0] / sums[1]).item()


__all__ = ["check_model", "cp_config", "relative_l1", "split_degree", "stage_degrees"]
