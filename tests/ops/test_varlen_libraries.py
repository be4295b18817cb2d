"""flash-attn and xformers on first contact: a library that is installed but broken (its import
fails, or its varlen call raises or answers wrongly) is found when availability is decided, not in
the middle of a model; it is skipped with the reason, logged once, and shown by ``surf_accel.info``.
Fake packages on ``sys.path`` stand in for the broken builds."""

import importlib
import logging
import sys
import textwrap

import pytest
import torch

import surf_accel.info as info
import surf_accel.ops.dispatch as dispatch
from surf_accel.ops.window_attention import partition

wa = importlib.import_module("surf_accel.ops.window_attention")  # the package re-exports the function's name
CPU, CUDA = torch.device("cpu"), torch.device("cuda")

FLASH_IMPORT_ERROR = "raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n"
FLASH_RAISES = """
def flash_attn_varlen_func(*args, **kwargs):
    raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
"""
# A correct varlen call (per-sequence SDPA), and one that ignores the sequence boundaries.
FLASH_CORRECT = """
import torch
import torch.nn.functional as F

def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k):
    out = torch.empty_like(q)
    for a, b, c, d in zip(cu_q[:-1].tolist(), cu_q[1:].tolist(), cu_k[:-1].tolist(), cu_k[1:].tolist()):
        out[a:b] = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[c:d].transpose(0, 1),
                                                  v[c:d].transpose(0, 1)).transpose(0, 1)
    return out
"""
FLASH_WRONG = """
import torch.nn.functional as F

def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k):
    return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)
"""
XFORMERS_RAISES = {"xformers/__init__.py": "", "xformers/ops.py": """
import types

def _raise(*args, **kwargs):
    raise NotImplementedError("No operator found for memory_efficient_attention_forward")

class _BlockDiagonalMask:
    @staticmethod
    def from_seqlens(q_seqlen, kv_seqlen):
        return (q_seqlen, kv_seqlen)

fmha = types.SimpleNamespace(attn_bias=types.SimpleNamespace(BlockDiagonalMask=_BlockDiagonalMask),
                             memory_efficient_attention=_raise)
"""}


def _fresh_decisions():
    partition.import_reason.cache_clear()
    partition._probe_reason.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] in ("flash_attn", "xformers")]:
        del sys.modules[name]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """``fake({relative path: source})`` writes packages into a folder put first on sys.path."""
    def install(files: dict[str, str]) -> None:
        for rel, source in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source))
        importlib.invalidate_caches()

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    _fresh_decisions()
    yield install
    _fresh_decisions()


def _warnings(caplog, text):
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_failing_import_makes_flash_attn_unavailable_logged_once(fake, caplog):
    fake({"flash_attn/__init__.py": FLASH_IMPORT_ERROR})
    with caplog.at_level(logging.WARNING, logger="surf_accel"):
        for _ in range(3):
            reason = partition.varlen_reason("flash-attn", CPU, torch.bfloat16)
            assert partition.varlen_library(CUDA, torch.bfloat16) is None
    assert "`import flash_attn` fails" in reason and "undefined symbol" in reason
    assert len(_warnings(caplog, "undefined symbol")) == 1


def test_raising_varlen_call_makes_flash_attn_unavailable_logged_once(fake, caplog):
    fake({"flash_attn/__init__.py": FLASH_RAISES})
    assert partition.import_reason("flash-attn") is None
    with caplog.at_level(logging.WARNING, logger="surf_accel"):
        for _ in range(3):
            reason = partition.varlen_reason("flash-attn", CPU, torch.float16)
    assert "failed a test call on cpu" in reason and "no kernel image" in reason
    assert len(_warnings(caplog, "no kernel image")) == 1


def test_the_probe_accepts_a_correct_call_and_refuses_a_wrong_one(fake):
    fake({"flash_attn/__init__.py": FLASH_CORRECT})
    assert partition.varlen_reason("flash-attn", CPU, torch.bfloat16) is None
    _fresh_decisions()
    fake({"flash_attn/__init__.py": FLASH_WRONG})
    assert "gave wrong results" in partition.varlen_reason("flash-attn", CPU, torch.bfloat16)


def test_raising_xformers_is_unavailable(fake):
    fake(XFORMERS_RAISES)
    reason = partition.varlen_reason("xformers", CPU, torch.bfloat16)
    assert "xformers failed a test call" in reason and "No operator found" in reason


def test_info_and_the_dispatch_choice_say_why(fake):
    fake({"flash_attn/__init__.py": FLASH_IMPORT_ERROR, **XFORMERS_RAISES})
    table = "\n".join(info.varlen_table())
    assert "flash-attn no: flash-attn is installed but `import flash_attn` fails" in table
    assert "undefined symbol" in table and "undefined symbol" in info.report()
    # On CUDA, bf16: neither library serves, so the fused Triton kernel is chosen and the reason
    # names both failures (no CUDA device here: xformers' test call fails at moving its inputs).
    order, why = wa._preference(CUDA, torch.bfloat16)
    assert order[0] == "triton"
    assert "undefined symbol" in why and "xformers failed a test call on cuda" in why


def test_fp32_on_cuda_goes_to_sdpa_not_triton():
    order, why = wa._preference(CUDA, torch.float32)
    assert order == ("cuda", "torch") and "spill" in why
