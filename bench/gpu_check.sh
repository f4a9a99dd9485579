#!/usr/bin/env bash
# The GPU check of the native ops, for one prepared non-interactive run on a single-GPU machine
# (H100/H200, Python 3.12, torch 2.11 cu130, no network): builds relground._C there, runs the CUDA
# tests of the four ops, then times each op against torchvision / plain PyTorch and prints the tables.
# Budget: under 8 minutes including the build (MAX_JOBS = all cores, one arch).
#
# Packages missing there (hypothesis for the property tests) travel as wheels in .whl/ (git-ignored):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       -d .whl hypothesis==6.170.17 sortedcontainers==2.4.0
# Device tool: run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Record the printed tables with card, date and command in bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/relground-gpu-check}
mkdir -p "$OUT"
log() { echo "== $(date -u +%H:%M:%S) $*"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

log "build (FORCE_CUDA=1, TORCH_CUDA_ARCH_LIST=9.0)"
rm -rf build relground/_C*.so
FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=$(nproc) \
  python3 setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -c "import relground, json; print(json.dumps(relground.build_info()))" || exit 1

log "CUDA tests of the ops"
python3 -m pytest -q -p no:cacheprovider -p no:logging tests/ops -k cuda 2>&1 | tee "$OUT/tests.log" | tail -30
status=${PIPESTATUS[0]}

log "benchmarks"
python3 bench/bench_roi_align_avg.py 2>&1 | tee "$OUT/bench_roi_align_avg.txt"
python3 bench/bench_batched_ops.py 2>&1 | tee "$OUT/bench_batched_ops.txt"
log "done (tests exit status $status)"
exit "$status"
