"""Public ops of surf_accel; each dispatches to a backend (``torch``, ``cpp``, ``cuda``, ``triton``).

``OPS`` maps op names to their dispatchers, whose ``explain(device, dtype)`` says which backends
can serve a call and why the others cannot.
"""

from surf_accel.ops.dispatch import BACKENDS, BackendUnavailableError
from surf_accel.ops.latent_ops import OPS, guided_step, reshift_downsample, upsample_mix
from surf_accel.ops.window_attention import WINDOW_ATTENTION, window_attention

OPS = {**OPS, WINDOW_ATTENTION.name: WINDOW_ATTENTION}

__all__ = ["BACKENDS", "OPS", "BackendUnavailableError", "guided_step", "reshift_downsample", "upsample_mix", "window_attention"]
