#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels a bare CUDA machine with only PyTorch
# needs to run the engine: the versions are this checkout's virtual environment's, for the
# GPU image's Python 3.12 on x86-64. They land in .whl/ (git-ignored through
# .git/info/exclude); carry that folder to the machine and run benchmarks/gpu_check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# The engine's imports that the GPU image lacks, and what those need in turn (its image has
# numpy, scipy, scikit-learn, scikit-image, pandas, PyYAML, grpcio, protobuf, rich, typer,
# requests, httpx, click, packaging, jinja2, joblib already).
NAMES="monai nibabel nilearn pydantic pydantic_core annotated-types typing-inspection opacus
opt_einsum flwr alembic Mako cryptography cffi pycparser fastapi starlette uvicorn
grpcio-health-checking iterators prompt_toolkit wcwidth pycryptodome SQLAlchemy greenlet tomli
tomli_w"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
freeze=$($PY -m pip list --format=freeze)
for name in $NAMES; do
  pin=$(echo "$freeze" | grep -i "^${name//_/[-_]}==" | head -1 || true)
  if [ -z "$pin" ]; then echo "not in the venv: $name" >&2; exit 1; fi
  plat=""
  for n in 28 27 17 24 31 34 35; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp $plat --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      --platform any -d .whl "$pin"
done
du -sh .whl
