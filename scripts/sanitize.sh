#!/usr/bin/env bash
# AddressSanitizer and ThreadSanitizer runs of the CUDA kernels in the CPU CUDA-semantics runtime (tests/cudasim).
#   ASan: every test of tests/cudasim, the runtime library built with -fsanitize=address (out-of-bounds reads and
#         writes of the kernels, use after free).
#   TSan: the kernel tests twice: blocks one at a time (races between the threads of a block: a missing
#         __syncthreads), then 4 blocks at a time for the kernels without __shared__ (races between blocks: a
#         missing atomicAdd); self_taught_targets has __shared__ and runs in the first pass only.
# The libraries build into build/cudasim/{address,thread} (cached; ~5 min each on 2 cores from scratch).
# usage: bash scripts/sanitize.sh [address|thread ...]     (default: both; PY=python to use, default .venv/bin/python)
# Results (date, commands, outcome): docs/using-the-ops.md, "The CUDA kernels without a GPU".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CUDASIM_TIMEOUT_S=${CUDASIM_TIMEOUT_S:-60}
# --capture=sys: a sanitizer reports on file descriptor 2 and ends the process; pytest's descriptor capture would
# swallow the report.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -W ignore --capture=sys)
KINDS=("${@:-address thread}")
status=0
for kind in ${KINDS[*]}; do
  lib=$("$PY" scripts/build_cudasim.py --sanitize "$kind" | tail -n 1)
  if [[ $kind == address ]]; then
    echo "== ASan: tests/cudasim with $lib"
    LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so.6)" \
      ASAN_OPTIONS=detect_leaks=0 RELGROUND_CUDASIM_LIB=$lib "${PYTEST[@]}" tests/cudasim || status=1
  else
    echo "== TSan, blocks one at a time: tests/cudasim/test_kernels_on_cpu.py with $lib"
    LD_PRELOAD="$(g++ -print-file-name=libtsan.so)" TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
      RELGROUND_CUDASIM_LIB=$lib "${PYTEST[@]}" tests/cudasim/test_kernels_on_cpu.py || status=1
    echo "== TSan, 4 blocks at a time (kernels without __shared__)"
    LD_PRELOAD="$(g++ -print-file-name=libtsan.so)" TSAN_OPTIONS="halt_on_error=1 exitcode=66" \
      CUDASIM_CONCURRENT_BLOCKS=4 RELGROUND_CUDASIM_LIB=$lib "${PYTEST[@]}" tests/cudasim/test_kernels_on_cpu.py \
      -k "not self_taught_targets" || status=1
  fi
done
echo "== sanitize.sh: $([[ $status == 0 ]] && echo clean || echo FINDINGS)"
exit $status
