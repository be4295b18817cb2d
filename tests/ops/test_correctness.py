"""The device correctness check (``surf_accel.ops.correctness``, ``surf-accel info --check``): at small
shapes on the CPU every backend that runs here is within its tolerance, and the check does fail when a
backend errs, leaks padded text, or raises."""

import torch

import surf_accel.info as info
from surf_accel.ops import correctness
from surf_accel.ops.window_attention import WINDOW_ATTENTION

ONE_CASE = (correctness.SMALL_ATTENTION[-1],)  # the joint case: padded and fully padded text


def _run(monkeypatch, **kwargs):
    monkeypatch.setattr(correctness, "SMALL_ATTENTION", ONE_CASE)
    monkeypatch.setattr(correctness, "DTYPES", (torch.bfloat16,))
    return correctness.run("cpu", real=False, **kwargs)


def test_every_cpu_backend_passes_at_small_shapes():
    rows = correctness.run("cpu", real=False)
    assert not correctness.failed(rows)
    ran = {(r.op, r.backend, r.dtype) for r in rows if r.error is not None}
    runnable = [b for b, reason in WINDOW_ATTENTION.explain("cpu").items() if reason is None]
    for case in correctness.SMALL_ATTENTION:
        for backend in runnable:
            for dtype in ("bfloat16", "float16", "float32"):
                assert (f"window_attention {case.name}", backend, dtype) in ran
    assert {r.backend for r in rows if r.auto and r.op.startswith("window_attention")} == {"cpp"}


def test_a_wrong_backend_fails_the_check(monkeypatch):
    real = WINDOW_ATTENTION.impls["triton"]
    monkeypatch.setitem(WINDOW_ATTENTION.impls, "triton", lambda *args: real(*args) * 1.05)
    rows = [r for r in _run(monkeypatch) if r.op.startswith("window_attention")]
    by_backend = {r.backend: r for r in rows}
    assert by_backend["triton"].passed is False and by_backend["torch"].passed
    assert correctness.failed(rows) and "FAIL" in correctness.table_row(by_backend["triton"])


def test_leaked_padding_fails_the_check(monkeypatch):
    """A backend that ignores the text mask attends to the poisoned padding."""
    real = WINDOW_ATTENTION.impls["torch"]
    monkeypatch.setitem(WINDOW_ATTENTION.impls, "flex",
                        lambda q, k, v, grid, window, shift, num_text, text_mask, lengths:
                        real(q, k, v, grid, window, shift, num_text, None, None))
    rows = {r.backend: r for r in _run(monkeypatch) if r.op.startswith("window_attention")}
    assert rows["flex"].passed is False and rows["cpp"].passed


def test_a_raising_backend_is_reported_and_the_check_goes_on(monkeypatch):
    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setitem(WINDOW_ATTENTION.impls, "cpp", broken)
    rows = _run(monkeypatch)
    cpp = next(r for r in rows if r.backend == "cpp" and r.op.startswith("window_attention"))
    assert cpp.error is None and "raised RuntimeError: CUDA error" in cpp.note
    assert correctness.failed(rows) and any(r.passed for r in rows if r.backend == "triton")


def test_a_forced_unusable_backend_leaves_no_automatic_choice(monkeypatch):
    monkeypatch.setenv("SURF_ACCEL_BACKEND", "cuda")
    rows = _run(monkeypatch)
    assert not any(r.auto for r in rows) and not correctness.failed(rows)


def test_budget_skips_the_rest():
    rows = correctness.run("cpu", real=False, budget_s=0.0)
    assert rows and all(r.error is None for r in rows)
    assert all(r.note.startswith(("skipped", "unavailable")) for r in rows)
    assert "skipped for time" in correctness.summary(rows)


def test_info_check_prints_the_table_and_fails_on_a_failure(monkeypatch, capsys):
    rows = [correctness.Row("window_attention x", "triton", "bfloat16", 0.01, error=0.5)]
    seen = []

    def run(device, real, budget_s, on_row):
        seen.append(real)
        for r in rows:
            on_row(r)
        return rows

    monkeypatch.setattr(correctness, "run", run)
    assert info.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert correctness.TABLE_HEADER[0] in out and "| FAIL |" in out and seen == [torch.cuda.is_available()]
    rows[0] = correctness.Row("window_attention x", "triton", "bfloat16", 0.01, error=0.001)
    assert info.main(["--check", "--real"]) == 0 and seen[-1] is True
