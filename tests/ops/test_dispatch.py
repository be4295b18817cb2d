"""Backend choice: forcing, explaining, falling back with one log line."""

import logging

import pytest
import torch

import surf_accel.ops as ops
from surf_accel.ops.dispatch import ENV_VAR, Op


def _inputs():
    x = torch.randn(1, 2, 1, 4, 4)
    return x, torch.randn_like(x)


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    assert ops.OPS["guided_step"].select(torch.device("cpu"), torch.float32, None) == "torch"


def test_forced_unavailable_backend_raises_with_reason(monkeypatch):
    x, v = _inputs()
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(ops.BackendUnavailableError, match="CUDA tensors"):
        ops.guided_step(x, v, None, 1.0, 0.5, 0.25)


def test_explicit_backend_overrides_env(monkeypatch):
    x, v = _inputs()
    monkeypatch.setenv(ENV_VAR, "cuda")
    out = ops.guided_step(x, v, None, 1.0, 0.5, 0.25, backend="torch")
    torch.testing.assert_close(out, x - 0.25 * v)


def test_unknown_backend_is_a_value_error():
    x, v = _inputs()
    with pytest.raises(ValueError, match="unknown backend"):
        ops.guided_step(x, v, None, 1.0, 0.5, 0.25, backend="metal")


def test_explain_gives_a_reason_for_every_unusable_backend():
    for op in ops.OPS.values():
        table = op.explain("cpu", torch.float32)
        assert set(table) == set(ops.BACKENDS)
        assert table["torch"] is None
        assert isinstance(table["cuda"], str) and table["cuda"]


def test_automatic_choice_on_cpu_prefers_cpp():
    assert ops.OPS["guided_step"].select(torch.device("cpu"), torch.float32, None) == "cpp"


def test_fallback_logs_one_line(caplog):
    def unusable(*args, **kwargs):
        return "test limit: refuses every call"

    op = Op("fallback_probe", impls={"torch": lambda x: x + 1, "cpp": lambda x: x - 1}, limits={"cpp": unusable})
    x = torch.randn(3)
    with caplog.at_level(logging.WARNING, logger="surf_accel"):
        for _ in range(3):
            assert torch.equal(op(x, device=x.device, dtype=x.dtype), x + 1)
    lines = [r.getMessage() for r in caplog.records if "fallback_probe" in r.getMessage()]
    assert len(lines) == 1 and "test limit" in lines[0] and "torch backend" in lines[0]
