#!/usr/bin/env bash
# The GPU check, on a bare CUDA machine with PyTorch (run from the repository root, with the
# wheels from benchmarks/gpu_wheels.sh carried in .whl/). Prints one JSON object; with $OUT
# set (the device tool's output folder) gpu_check.json lands there.
#   bash benchmarks/gpu_check.sh [STUDY_SECONDS]     # default 300
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
else
  export PYTHONPATH="$PWD"
fi
export PYTHONUNBUFFERED=1 FEDSCT_RUNS_DIR="${TMPDIR:-/tmp}/fedsct-gpu-runs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -m benchmarks.gpu_check --out "${OUT:-test-output/gpu}" --study-seconds "${1:-300}"
