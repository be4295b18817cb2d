"""surf_accel: SURF (preview with noise reshifting + windowed refiner) for diffusers video DiTs."""

__version__ = "0.1.0"

# Public API, imported on first use so that `import surf_accel` stays fast and never fails because
# an optional extension or diffusers component is missing.
_LAZY = {
    "SurfConfig": ("surf_accel.config", "SurfConfig"),
    "patch": ("surf_accel.api", "patch"),
    "unpatch": ("surf_accel.api", "unpatch"),
    "patched": ("surf_accel.api", "patched"),
    "is_patched": ("surf_accel.api", "is_patched"),
    "Refiner": ("surf_accel.refiner", "Refiner"),
    "Family": ("surf_accel.family", "Family"),
    "FamilyAdapter": ("surf_accel.family", "FamilyAdapter"),
    "AttentionSpec": ("surf_accel.family", "AttentionSpec"),
    "register_family": ("surf_accel.registry", "register_family"),
    "unregister_family": ("surf_accel.registry", "unregister_family"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'surf_accel' has no attribute {name!r}")
