#!/usr/bin/env bash
# On a GPU machine with a CUDA build of torch: build the CUDA extension, run the GPU-marked tests
# (CUDA and compiled Triton against the references), then the GPU benchmarks and the real-shape
# suite (benchmarks/gpu_suite.py, < 8 min on one H100/H200). Results go to
# ${RESULTS:-benchmarks/results}/gpu_*; commit them with the card named (the files name it).
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-benchmarks/results}
mkdir -p "$RESULTS"
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: run this on a GPU machine'"
SURF_ACCEL_FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} pip install --no-build-isolation -e ".[test]" 2>&1 | tail -3
python -m surf_accel.info | tee "$RESULTS/gpu_info.txt"
status=0
python -m pytest -q -m gpu tests 2>&1 | tee "$RESULTS/gpu_tests.txt" || status=1
python benchmarks/ops.py --device cuda --dtype bf16 --out "$RESULTS/gpu_ops.md" || status=1
python benchmarks/window_attention.py --out "$RESULTS/gpu_window_attention.md" || status=1
python benchmarks/gpu_suite.py --out "$RESULTS/gpu_suite" 2>&1 | tee "$RESULTS/gpu_suite.log" || status=1
exit $status
