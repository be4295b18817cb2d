"""The core's one way to the implementations in ``surf_accel.integrations``: the registered model
families and accelerators (the built-in ones register when this module imports the package), and the
attention and compile hooks the stage runner installs per stage, and the windows refiner training
trains through."""

from __future__ import annotations

import surf_accel.integrations  # noqa: F401  (registers the built-in families and accelerators)
from surf_accel.family import (Family, attention_spec, families, family_named, find_family, register_family,
                               unregister_family)
from surf_accel.integrations.accelerators.compile import compile_watch
from surf_accel.integrations.accelerators.sparse_attention import sparse_attention
from surf_accel.integrations.window_processors import training_windows, windowed_attention
from surf_accel.stages import (AcceleratorKind, accelerator_kinds, cache_forms, install_cache, register_accelerator,
                               remove_caches)

__all__ = ["AcceleratorKind", "Family", "accelerator_kinds", "attention_spec", "cache_forms", "compile_watch",
           "families", "family_named", "find_family", "install_cache", "register_accelerator", "register_family",
           "remove_caches", "sparse_attention", "training_windows", "unregister_family", "windowed_attention"]
