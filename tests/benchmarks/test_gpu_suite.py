"""benchmarks/gpu_suite.py --dry-run: the GPU suite's whole code path on CPU with tiny configs, so
it cannot rot between the rare GPU runs. Times are meaningless here; completeness is checked, and
that a failure or the time budget in any section never costs the others or the results so far."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's package, whatever the environment has installed
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "gpu_suite.md").read_text()
    for section in ("## 1. Transformer", "## 2. VAE", "## 3. Fused latent ops", "## 4. Window attention",
                    "## 5. Predicted end-to-end"):
        assert section in text
    assert "Skipped or failed" not in text  # every forward, VAE pass and op ran
    for label in ("wan2.1-14b 720p 81f | paper |", "trained 1.3B refiner + windows", "hunyuanvideo 720p 129f"):
        assert label in text
    # every window backend that runs on CPU served the windowed forwards, beside the dense one
    for backend in ("| cpp |", "| flex |", "| torch |", "| dense |"):
        assert backend in text
    assert "3497 s -> 278 s" in text


def _suite_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_suite
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return gpu_suite


def _raiser(exc):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_every_section_records_any_exception_and_goes_on(tmp_path, monkeypatch):
    """Not only RuntimeError/OOM: a failure of any type in any section is written down and the
    later sections still run; the results file is there at the end."""
    gs = _suite_module()
    monkeypatch.setattr(gs, "build", _raiser(KeyError("no such config key")))
    monkeypatch.setattr(gs, "vae_module", _raiser(ValueError("bad VAE config")))
    monkeypatch.setattr(gs.ops_bench, "timed", _raiser(AssertionError("copy mismatch")))
    monkeypatch.setattr(gs.window_bench, "run", _raiser(TypeError("unexpected argument")))
    monkeypatch.setattr(gs, "plots", _raiser(ImportError("matplotlib backend")))
    assert gs.main(["--dry-run", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_suite.md").read_text()
    for failure in ("building wan2.1-14b: KeyError", "building the wan2.1 VAE: ValueError",
                    "copy and inputs: AssertionError", "window attention op: TypeError", "plots: ImportError"):
        assert failure in text
    assert "## 5. Predicted end-to-end" in text


def test_results_are_written_as_they_come(tmp_path, monkeypatch):
    """A later section that dies (here: the process is interrupted in the VAE section) leaves the
    forwards measured before it in gpu_suite.md."""
    gs = _suite_module()

    def fake_forwards(suite, shapes):
        with suite.attempt("forward"):
            suite.forwards[("wan2.1-14b", (21, 90, 160), None, None)] = (12.5, 3.0)

    monkeypatch.setattr(gs, "measure_forwards", fake_forwards)
    monkeypatch.setattr(gs, "measure_vae", _raiser(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        gs.main(["--dry-run", "--out", str(tmp_path)])
    assert "| wan2.1-14b | (21, 90, 160) | 75600 | - | dense | 12.500 |" in (tmp_path / "gpu_suite.md").read_text()


def test_every_section_respects_the_budget(tmp_path):
    gs = _suite_module()
    assert gs.main(["--dry-run", "--budget", "0", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "gpu_suite.md").read_text()
    for what in ("forwards of wan2.1-14b", "VAE wan2.1", "latent ops (1, 16, 2, 8, 8)", "window attention op"):
        assert f"- {what}: time budget spent" in text
