"""scripts/gpu_check.sh: its dry run (CPU, small shapes, Triton interpreted) runs the correctness
step for real, and a failing step never stops the ones after it."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(out: Path, *args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_dry_run_correctness_step(tmp_path):
    proc = _run(tmp_path, "--only", "correctness")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = (tmp_path / "steps.md").read_text()
    assert "| correctness | ok |" in steps
    for other in ("info", "tests", "timings", "suite"):
        assert f"| {other} | skipped: --only correctness |" in steps
    table = (tmp_path / "correctness.md").read_text()
    for backend in ("torch", "cpp", "triton", "flex"):
        assert f"(one sample all padding) | {backend} | bfloat16 |" in table
    assert "| pass |" in table and "| FAIL |" not in table and "| raised" not in table
    assert "rows within tolerance, 0 failed or raised" in table


def test_a_failing_step_is_recorded_and_the_rest_still_run(tmp_path):
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'ImportError: broken environment' >&2\nexit 3\n")
    broken.chmod(0o755)
    proc = _run(tmp_path / "out", python=str(broken))
    assert proc.returncode == 1
    steps = (tmp_path / "out" / "steps.md").read_text()
    for step in ("info", "correctness", "timings", "suite"):
        assert f"| {step} | FAILED: exit status 3 (see {step}.log) |" in steps
    assert "| tests | skipped: pytest is not installed |" in steps
    assert "broken environment" in (tmp_path / "out" / "info.log").read_text()
