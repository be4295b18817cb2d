"""Analytic cost model (docs/design.md 6): transformer and VAE specs with their FLOP counts
(``specs``), what a planned call costs (``plan_cost``), VAE FLOPs measured per architecture (``vae``).
The catalogue of published checkpoints, and ``estimate`` by catalogue name, are in
``surf_accel.catalogue``: each model family declares its own."""

from surf_accel.cost_model.plan_cost import Estimate, StageCost, estimate_plan
from surf_accel.cost_model.specs import (FamilyDefaults, HunyuanVideo15Spec, HunyuanVideoSpec, TransformerSpec, VaeSpec,
                                         forward_flops)
from surf_accel.cost_model.vae import measure_vae, vae_spec

__all__ = ["Estimate", "FamilyDefaults", "HunyuanVideo15Spec", "HunyuanVideoSpec", "StageCost", "TransformerSpec",
           "VaeSpec", "estimate_plan", "forward_flops", "measure_vae", "vae_spec"]
