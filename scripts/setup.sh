#!/usr/bin/env bash
# Creates ./.venv and installs relground with everything it needs. Idempotent: a second run only
# rebuilds what changed. The CUDA kernels are compiled whenever a CUDA toolkit is found (nvcc 13.0 at
# /usr/local/cuda-13.0 on the project machines), also without a GPU; FORCE_ONLY_CPU=1 skips them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

python -m pip install -q --upgrade pip setuptools wheel
python -m pip install -q -r requirements.txt
if [ "${RELGROUND_WITH_DALI:-1}" = "1" ]; then
  # NVIDIA DALI: the GPU image pipeline (its CPU operators also run here). Optional: RELGROUND_WITH_DALI=0 skips it.
  python -m pip install -q nvidia-dali-cuda130==2.4.0 || echo "setup: DALI could not be installed; the PIL loader is used"
fi

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda-13.0/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda-13.0
fi
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
# Build against the pinned torch installed above (the extension's ABI must match it), in place and
# incrementally (ninja keeps ./build), then register the editable package and the `relground` command.
python setup.py -q build_ext --inplace
RELGROUND_SKIP_EXT=1 python -m pip install -q --no-build-isolation --no-deps -e .
python -c "import relground, json; print('relground built:', json.dumps(relground.build_info()))"
