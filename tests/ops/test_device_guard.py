"""Every Triton launcher runs its kernels inside ``device_guard(inputs' device)`` (through the shared
``launch.run``): Triton launches on the current CUDA device, so without the guard a tensor on cuda:1
would be read by a kernel running on cuda:0. No GPU here: the guard is replaced by a recorder and
each kernel launch checks it is inside."""

import contextlib

import pytest
import torch

import surf_accel.ops as ops
from surf_accel.ops.window_attention import WINDOW_ATTENTION
from tests.ops.helpers import seeded

if WINDOW_ATTENTION.explain("cpu")["triton"]:
    pytest.skip(WINDOW_ATTENTION.explain("cpu")["triton"], allow_module_level=True)

from surf_accel.triton_kernels import latent_ops, launch  # noqa: E402  (needs triton)
from surf_accel.triton_kernels import window_attention as attention_kernels  # noqa: E402


class Guard:
    """Records the devices entered; ``active`` while inside."""

    def __init__(self):
        self.entered, self.active = [], False

    @contextlib.contextmanager
    def __call__(self, device):
        self.entered.append(device)
        self.active = True
        try:
            yield
        finally:
            self.active = False


class Spy:
    """Stands in for a kernel: every launch must happen inside the guard."""

    def __init__(self, kernel, guard, launches, run=True):
        self.kernel, self.guard, self.launches, self.run = kernel, guard, launches, run

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            assert self.guard.active, "kernel launched outside the device guard"
            self.launches.append(getattr(self.kernel, "__name__", "autotuned"))
            if self.run:
                return self.kernel[grid](*args, **kwargs)
        return call


@pytest.fixture
def guard(monkeypatch):
    g, launches = Guard(), []
    monkeypatch.setattr(launch, "device_guard", g)
    for module in (latent_ops, attention_kernels):
        for name in dir(module):
            if name.endswith("_kernel"):
                monkeypatch.setattr(module, name, Spy(getattr(module, name), g, launches))
    g.launches = launches
    return g


def _latent(*shape):
    return torch.randn(shape, generator=seeded("guard", shape))


LATENT_CALLS = {
    "reshift_downsample": lambda: ops.reshift_downsample(_latent(1, 2, 1, 4, 6), _latent(1, 2, 1, 4, 6),
                                                         _latent(1, 2, 1, 2, 3), 0.5, 0.4, 2, backend="triton"),
    "upsample_mix": lambda: ops.upsample_mix(_latent(1, 2, 1, 2, 3), _latent(1, 2, 1, 4, 6), 0.3, 2, backend="triton"),
    "guided_step flat": lambda: ops.guided_step(_latent(1, 2, 1, 4, 6), _latent(1, 2, 1, 4, 6), None, 1.0, 0.5, 0.4,
                                                backend="triton"),
    "guided_step strided": lambda: ops.guided_step(_latent(1, 2, 1, 4, 6), _latent(1, 2, 1, 6, 4).transpose(-1, -2),
                                                   None, 1.0, 0.5, 0.4, backend="triton"),
}


@pytest.mark.parametrize("name", list(LATENT_CALLS))
def test_latent_launchers_are_guarded(guard, name):
    LATENT_CALLS[name]()
    assert guard.entered == [torch.device("cpu")] and len(guard.launches) == 1


def _attention_inputs():
    q = torch.randn(1, 2 * 3 * 4 + 3, 2, 16, generator=seeded("guard-attention"))
    return q, q.clone(), q.clone()


@pytest.mark.parametrize("config", [attention_kernels.INTERPRET_CONFIG, None], ids=["fixed", "default"])
def test_window_attention_launcher_is_guarded(guard, config):
    q, k, v = _attention_inputs()
    mask = torch.tensor([[True, False, True]])
    attention_kernels.window_attention(q, k, v, (2, 3, 4), (1, 2, 2), (0, 1, 1), 3, mask, config=config)
    assert guard.entered == [torch.device("cpu")] and guard.launches == ["_window_attn_fwd_kernel"]


def test_autotuned_launch_is_guarded(guard, monkeypatch):
    """The GPU path (no fixed config): the autotuner benchmarks and launches inside the guard too."""
    monkeypatch.setattr(attention_kernels, "INTERPRET", False)
    monkeypatch.setattr(attention_kernels, "_autotuned",
                        lambda head_dim, dtype: Spy(None, guard, guard.launches, run=False))
    q, k, v = _attention_inputs()
    attention_kernels.window_attention(q, k, v, (2, 3, 4), (1, 2, 2), (0, 1, 1), 3, None)
    assert guard.entered == [torch.device("cpu")] and guard.launches == ["autotuned"]


def test_guard_selects_the_tensors_cuda_device():
    cuda_guard = launch.device_guard(torch.device("cuda", 1))
    assert isinstance(cuda_guard, torch.cuda.device) and cuda_guard.idx == 1
    assert isinstance(launch.device_guard(torch.device("cpu")), contextlib.nullcontext)
