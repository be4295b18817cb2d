"""benchmarks/gpu_suite.py --dry-run: the GPU suite's whole code path on CPU with tiny configs, so
it cannot rot between the rare GPU runs. Times are meaningless here; only completeness is checked."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_writes_every_section(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
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
