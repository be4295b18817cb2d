"""One dispatch layer for every op: backends declare what they support, the layer picks one per
call and can say why it did not pick the others.

Order of preference: on CUDA tensors ``cuda``, ``triton``, ``torch``; on CPU tensors ``cpp``,
``torch`` (interpreted Triton runs on CPU only when asked for: it is a test vehicle, not a speed-up).
An op may rank its backends itself (``Op.preference``, e.g. window attention, whose best CUDA path
depends on which attention libraries are installed); its choice is then logged once at INFO with
the reason. ``flex`` (torch's ``flex_attention``) serves on request only.
``SURF_ACCEL_BACKEND`` or a per-call ``backend=`` forces one; a forced backend that cannot serve the
call raises ``BackendUnavailableError`` with the reason. An automatic choice that skips the
preferred backend logs one line per distinct reason.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

logger = logging.getLogger("surf_accel")

BACKENDS = ("torch", "cpp", "cuda", "triton", "flex")
PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpp", "torch")}
ENV_VAR = "SURF_ACCEL_BACKEND"

# (device, dtype) -> reason the backend cannot serve it, or None.
Capability = Callable[[torch.device, torch.dtype], "str | None"]
# (device, dtype) -> (backends in order of preference, why that order), decided without the call's data.
Preference = Callable[[torch.device, torch.dtype], "tuple[tuple[str, ...], str]"]


class BackendUnavailableError(RuntimeError):
    """A backend was requested explicitly and cannot serve the call."""


@dataclass(frozen=True)
class Backend:
    name: str
    capability: Capability


@dataclass
class Op:
    """An op with one implementation per backend. ``requires`` holds per-backend checks that do not
    depend on the call (is this op's kernel built?); ``limits`` per-backend checks of the call's
    arguments (shape limits), called with the op's arguments. Each returns a reason or None.
    ``preference`` replaces the global ``PREFERENCE`` order for this op."""

    name: str
    impls: dict[str, Callable] = field(default_factory=dict)
    requires: dict[str, Callable[[], "str | None"]] = field(default_factory=dict)
    limits: dict[str, Callable[..., "str | None"]] = field(default_factory=dict)
    preference: "Preference | None" = None

    def __post_init__(self) -> None:
        _OPS[self.name] = self

    def reason_unusable(self, backend: str, device: torch.device, dtype: torch.dtype, args=None, kwargs=None) -> str | None:
        """Why ``backend`` cannot serve this op on ``device``/``dtype`` (and, when ``args`` are
        given, for that call), or None."""
        reason = _static_reason(self.name, backend, device, dtype)
        if reason is None and args is not None and backend in self.limits:
            reason = self.limits[backend](*args, **(kwargs or {}))
        return reason

    def explain(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> dict[str, str | None]:
        """Backend name -> None when it can serve ``device``/``dtype``, else the reason it cannot."""
        device = torch.device(device)
        return {b: self.reason_unusable(b, device, dtype) for b in BACKENDS}

    def choose(self, device: torch.device, dtype: torch.dtype, backend: str | None = None, args=None, kwargs=None
               ) -> tuple[str, list[tuple[str, str]]]:
        """The backend for a call and the preferred ones skipped on the way, with reasons. Pure:
        ``select`` is the same plus the fallback log line."""
        forced = backend or _forced_by_env()
        if forced is not None:
            if forced not in BACKENDS:
                raise ValueError(f"unknown backend {forced!r}; choose one of {list(BACKENDS)}")
            reason = self.reason_unusable(forced, device, dtype, args, kwargs)
            if reason is not None:
                source = f"{ENV_VAR}={forced}" if backend is None else f"backend={forced!r}"
                raise BackendUnavailableError(f"{self.name}: {source} cannot run on {device.type}/{dtype}: {reason}")
            return forced, []
        skipped = []
        for name in _order(self.name, device, dtype)[0]:
            reason = self.reason_unusable(name, device, dtype, args, kwargs)
            if reason is None:
                return name, skipped
            skipped.append((name, reason))
        raise BackendUnavailableError(f"{self.name}: no backend can run on {device.type}/{dtype}: {skipped}")

    def select(self, device: torch.device, dtype: torch.dtype, backend: str | None = None, args=None, kwargs=None) -> str:
        chosen, skipped = self.choose(device, dtype, backend, args, kwargs)
        if skipped:
            _log_fallback_once(self.name, chosen, tuple(skipped))
        elif self.preference is not None and backend is None and _forced_by_env() is None:
            _log_choice_once(self.name, device.type, str(dtype), chosen, _order(self.name, device, dtype)[1])
        return chosen

    def __call__(self, *args, device: torch.device, dtype: torch.dtype, backend: str | None = None, **kwargs):
        chosen = self.select(device, dtype, backend, args, kwargs)
        return self.impls[chosen](*args, **kwargs)


_REGISTRY: dict[str, Backend] = {}
_OPS: dict[str, Op] = {}
_LOGGED: set[tuple] = set()


def register_backend(backend: Backend) -> None:
    _REGISTRY[backend.name] = backend


# The call-independent parts of the choice (environment, built kernels, device and dtype support)
# run eagerly and are constants to torch.compile, so a compiled model traces straight to the chosen
# kernel without graph breaks.
@torch.compiler.assume_constant_result
def _static_reason(op_name: str, backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    op = _OPS[op_name]
    if backend not in op.impls:
        return f"{backend} has no implementation of {op_name}"
    reason = _REGISTRY[backend].capability(device, dtype)
    if reason is None and backend in op.requires:
        reason = op.requires[backend]()
    return reason


@torch.compiler.assume_constant_result
def _order(op_name: str, device: torch.device, dtype: torch.dtype) -> tuple[tuple[str, ...], str]:
    op = _OPS[op_name]
    if op.preference is not None:
        return op.preference(device, dtype)
    return PREFERENCE.get(device.type, ("torch",)), "default order"


@torch.compiler.assume_constant_result
def _forced_by_env() -> str | None:
    return os.environ.get(ENV_VAR) or None


@torch.compiler.assume_constant_result
def _log_fallback_once(op: str, chosen: str, skipped: tuple) -> None:
    key = (op, chosen, skipped)
    if key not in _LOGGED:
        _LOGGED.add(key)
        why = "; ".join(f"{n}: {r}" for n, r in skipped)
        logger.warning("surf_accel.%s uses the %s backend (%s)", op, chosen, why)


@torch.compiler.assume_constant_result
def _log_choice_once(op: str, device: str, dtype: str, chosen: str, why: str) -> None:
    key = (op, device, dtype, chosen)
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.info("surf_accel.%s on %s/%s uses the %s backend: %s", op, device, dtype, chosen, why)
