#!/usr/bin/env bash
# First contact with a GPU machine: what surf_accel's kernels do there, in steps that each write their
# results into OUTDIR as they go, each under its own time budget (all together within 8 minutes on one
# H100; a later step gets what is left and is skipped under 15 s). A step that fails or runs out of
# time is recorded and the next one runs; OUTDIR/steps.md lists every step's outcome and the exit
# status is non-zero when any step failed.
#
#   scripts/gpu_check.sh [--dry-run] [--only STEP] OUTDIR
#
# Steps: info (versions, devices, backend choices; flash-attn/xformers import and test calls),
# build (only when the extension has no CUDA kernels: pip install --no-deps --no-build-isolation -e .,
# nothing else is installed), correctness (every backend against the fp32 torch reference at real
# shapes: surf_accel/ops/correctness.py, OUTDIR/correctness.md), tests (pytest -m gpu), timings
# (benchmarks/ops.py, benchmarks/window_attention.py), suite (benchmarks/gpu_suite.py). Offline-safe:
# what is missing (pytest, pip, a CUDA torch) is skipped with the reason.
#
# --dry-run runs the same steps on the CPU at small shapes, Triton under its interpreter (CI runs it).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

DRY=0
ONLY=""
while [ $# -gt 1 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -eq 1 ] || { echo "usage: scripts/gpu_check.sh [--dry-run] [--only STEP] OUTDIR" >&2; exit 2; }
OUT=$1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

PY=${PYTHON:-python}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, whatever else is installed
TOTAL=${GPU_CHECK_BUDGET:-470}  # seconds for all steps together
START=$(date +%s)
FAILED=0
STEPS="$OUT/steps.md"
printf '# gpu_check.sh%s\n\n| step | result | seconds | output |\n|---|---|---|---|\n' \
  "$([ $DRY = 1 ] && echo ' --dry-run (CPU, small shapes, Triton interpreted)')" > "$STEPS"

record() {  # step, result, seconds, output
  printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4" >> "$STEPS"
  echo "== $1: $2 ($3 s)"
}

# run_step NAME BUDGET_S OUTPUT COMMAND...: runs COMMAND under the smaller of BUDGET_S and what is
# left of TOTAL, its output in OUTDIR/NAME.log (written as it runs).
run_step() {
  local name=$1 budget=$2 output=$3
  shift 3
  if [ -n "$ONLY" ] && [ "$ONLY" != "$name" ]; then
    record "$name" "skipped: --only $ONLY" 0 "-"
    return
  fi
  local left=$((TOTAL - ($(date +%s) - START)))
  [ "$budget" -le "$left" ] || budget=$left
  if [ "$budget" -lt 15 ]; then
    record "$name" "skipped: overall budget of $TOTAL s spent" 0 "-"
    return
  fi
  echo "== $name (up to $budget s)"
  local t0=$(date +%s) rc
  timeout --kill-after=10 "$budget" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local secs=$(($(date +%s) - t0)) result
  case $rc in
    0) result="ok" ;;
    124|137) result="FAILED: timed out after $budget s"; FAILED=1 ;;
    *) result="FAILED: exit status $rc (see $name.log)"; FAILED=1 ;;
  esac
  tail -n 3 "$OUT/$name.log"
  record "$name" "$result" "$secs" "$output"
}

skip_step() {  # name, reason
  if [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; then record "$1" "skipped: $2" 0 "-"; fi
}

if [ $DRY = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=cpu
else
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "no CUDA device (or no CUDA build of torch): run on a GPU machine, or pass --dry-run" >&2
    exit 2
  fi
  DEVICE=cuda
fi

run_step info 60 "info.log" "$PY" -m surf_accel.info

# The extension: built when it lacks the kernels for this device (CPU ones in a dry run).
NEED=$([ $DRY = 1 ] && echo loaded || echo has_cuda_kernels)
if "$PY" -c "import sys; from surf_accel import _extension as e; sys.exit(0 if e.status().$NEED else 1)"; then
  skip_step build "the extension is built ($("$PY" -c "from surf_accel import _extension as e; print(e.status().describe())"))"
elif [ $DRY = 1 ]; then
  skip_step build "dry run: nothing is built; the C++ rows say the extension is missing"
elif ! "$PY" -m pip --version > /dev/null 2>&1; then
  skip_step build "pip is not available: the CUDA backend's rows will say the extension is missing"
else
  run_step build 200 "build.log" env SURF_ACCEL_FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" \
    "$PY" -m pip install --no-deps --no-build-isolation -e .
fi

# The check's own budget is below the step's, so it reports the rows it could not reach.
run_step correctness 170 "correctness.md" "$PY" -m surf_accel.ops.correctness --device "$DEVICE" \
  --budget 150 --out "$OUT/correctness.md"

if "$PY" -c "import pytest" 2> /dev/null; then
  run_step tests 90 "tests.log" "$PY" -m pytest -q -m gpu tests -p no:cacheprovider
else
  skip_step tests "pytest is not installed"
fi

run_step timings 90 "ops.md, window_attention.md" bash -c \
  "'$PY' benchmarks/ops.py --device $DEVICE --out '$OUT/ops.md' && \
   '$PY' benchmarks/window_attention.py --device $DEVICE --budget 60 --out '$OUT/window_attention.md'"

SUITE_ARGS=(--out "$OUT/suite" --budget 90)
[ $DRY = 1 ] && SUITE_ARGS+=(--dry-run)
run_step suite 110 "suite/gpu_suite.md" env -u TRITON_INTERPRET "$PY" benchmarks/gpu_suite.py "${SUITE_ARGS[@]}"

echo "total $(($(date +%s) - START)) s; steps in $STEPS"
exit $FAILED
