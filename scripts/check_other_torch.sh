#!/usr/bin/env bash
# Packaging check against another torch than the project's: a throwaway venv with torch 2.13.0 (the CPU build
# on this machine's local index), relground built there without build isolation (FORCE_ONLY_CPU=1, via
# scripts/build_wheel.sh: a +pt213cpu wheel) and installed, build_info()['torch_version'] checked, tests/ops run
# against the installed package. Then the mismatch message both ways, without touching either install (a copy
# of the package put first on PYTHONPATH, with its metadata):
#   A. the extension built for .venv's torch (the in-place relground/_C*.so of scripts/setup.sh) under torch 2.13;
#   B. the extension built for torch 2.13 under .venv's torch.
# Each must fail with the ImportError that names both versions and the rebuild command, and with
# RELGROUND_ALLOW_FALLBACK=1 import with HAS_OPS False and a warning.
#
#   bash scripts/check_other_torch.sh      # TORCH_SPEC (torch==2.13.0), TORCHVISION_SPEC (torchvision==0.28.0),
#                                          # EXPECT_TORCH (2.13), KEEP=1 keeps the temporary folder,
#                                          # WHEEL=path: install that wheel instead of building one
#
# The wheel built is also copied to build/wheelhouse/ (WHEEL= for a second run). torchvision is only the tests'
# oracle; when the torchvision at hand does not import under this torch (on this machine the torchvision 0.28.0
# wheels are CUDA builds, which do not load under the torch 2.13.0+cpu wheel), the test modules that import it
# are left out and the summary says so: TORCH_SPEC='torch===2.13.0' (the CUDA 13.0 build of 2.13.0, which also
# runs on a CPU) runs all of tests/ops.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}  # the project's environment (its torch is "the other one" for B)
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.28.0}
EXPECT_TORCH=${EXPECT_TORCH:-2.13}
work=$(mktemp -d "${TMPDIR:-/tmp}/relground-check-torch.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "check_other_torch: kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
start=$SECONDS
failures=()

# shellcheck source=scripts/_ops_tests.sh
. "$REPO/scripts/_ops_tests.sh"

# mismatch_case NAME PYTHON SHADOW_DIR: `import relground` from SHADOW_DIR must raise the clear ImportError, and
# import with HAS_OPS False under RELGROUND_ALLOW_FALLBACK=1.
mismatch_case() {
  local name=$1 py=$2 shadow=$3 out rc
  set +e
  out=$(cd "$shadow" && env PYTHONPATH="$shadow" "$py" -c "import relground" 2>&1)
  rc=$?
  set -e
  echo "---- $name: import relground -> exit $rc; the error:"
  echo "$out" | sed -n '/^ImportError/,$p'
  if [ "$rc" = 0 ] || ! grep -q "pip install --no-build-isolation" <<<"$out" || ! grep -q "2\.13" <<<"$out" \
     || ! grep -q "2\.14" <<<"$out"; then
    echo "check_other_torch: $name: FAILED (no clear ImportError naming both versions)"; failures+=("$name"); return
  fi
  set +e
  out=$(cd "$shadow" && env PYTHONPATH="$shadow" RELGROUND_ALLOW_FALLBACK=1 "$py" -W always -c "
import torch, relground
from relground.ops import pairwise_iou
assert not relground.HAS_OPS
b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0]])
print('fallback: HAS_OPS', relground.HAS_OPS, 'pairwise_iou', pairwise_iou(b, b)[0].tolist(), 'from', relground.__file__)
" 2>&1)
  rc=$?
  set -e
  echo "---- $name with RELGROUND_ALLOW_FALLBACK=1 -> exit $rc:"
  echo "$out" | grep -E "RuntimeWarning|fallback:" | cut -c1-220
  if [ "$rc" != 0 ] || ! grep -q "RuntimeWarning" <<<"$out"; then
    echo "check_other_torch: $name fallback: FAILED"; failures+=("$name-fallback")
  else
    echo "check_other_torch: $name: OK"
  fi
}

base=$("$PYTHON" -c "import sys; print(sys._base_executable)")
"$base" -m venv "$work/venv"
V=$work/venv/bin/python
echo "check_other_torch: installing $TORCH_SPEC into $work/venv"
"$V" -m pip install -q "$TORCH_SPEC"
torch_dist=$("$V" -c "from importlib.metadata import version; print(version('torch'))")
echo "torch==$torch_dist" > "$work/constraints.txt"  # nothing below may replace it
test_reqs=$(grep -E '^(pytest|hypothesis|expecttest)==' requirements.txt | tr '\n' ' ')
"$V" -m pip install -q -c "$work/constraints.txt" "$TORCHVISION_SPEC" "setuptools>=77" wheel ninja $test_reqs
"$V" -c "import torch; print('check_other_torch: torch', torch.__version__, 'CUDA', torch.version.cuda)"
partial=""
if ! "$V" -c "import torchvision" >"$work/torchvision.log" 2>&1; then
  tail -n 1 "$work/torchvision.log"
  partial=" (partial: torchvision does not import under this torch, its oracle tests left out)"
  echo "check_other_torch: torchvision does not import under this torch: tests/ops runs without the modules that import it"
  for f in $(grep -l -E '^(import torchvision|from torchvision)' "$REPO"/tests/ops/test_*.py) \
           $(grep -l -E '^from tests\.ops\.test_pairwise_iou' "$REPO"/tests/ops/test_*.py); do
    PYTEST_EXTRA+=("--ignore=tests/ops/$(basename "$f")")
  done
fi

build_start=$SECONDS
if [ -n "${WHEEL:-}" ]; then
  wheel=$(cd "$(dirname "$WHEEL")" && pwd)/$(basename "$WHEEL")
  echo "check_other_torch: installing the given wheel $wheel (no build)"
else
  FORCE_ONLY_CPU=1 PYTHON=$V bash scripts/build_wheel.sh "$work/wheelhouse" | tee "$work/build.log"
  wheel=$(tail -n 1 "$work/build.log")
  mkdir -p "$REPO/build/wheelhouse" && cp "$wheel" "$REPO/build/wheelhouse/"
fi
build_s=$((SECONDS - build_start))
"$V" -m pip install -q -c "$work/constraints.txt" "$wheel"
(cd "$work" && "$V" -c "
import importlib.metadata as m, relground
info = relground.build_info()
print('check_other_torch: relground', m.version('relground'), 'at', relground.__file__, '| build_info', info)
assert info['torch_version'].startswith('$EXPECT_TORCH'), info
assert '+pt${EXPECT_TORCH/./}cpu' in m.version('relground'), m.version('relground')
")  # from $work: in the checkout, ./relground would shadow the installed package

set +e
run_ops_tests "$V" "$work/venv" "$work/t" 2>&1 | tee "$work/pytest.log"
rc=${PIPESTATUS[0]}
set -e
summary=$(grep -E '(passed|failed|error)' "$work/pytest.log" | tail -n 1)
[ "$rc" = 0 ] || failures+=("tests/ops")

# The two mismatch cases, each from a copy of a relground package (and its metadata) first on PYTHONPATH.
site=$(cd "$work" && "$V" -c "import os, relground; print(os.path.dirname(relground.__file__))")
mkdir -p "$work/shadow13"
cp -r "$site" "$work/shadow13/relground"
cp -r "$(dirname "$site")"/relground-*.dist-info "$work/shadow13/"
so14=$(ls "$REPO"/relground/_C*.so 2>/dev/null | head -n 1 || true)
if [ -n "$so14" ]; then
  mkdir -p "$work/shadow14"
  (cd "$REPO" && tar --exclude=__pycache__ -cf - relground) | tar -xf - -C "$work/shadow14"
  cp -r "$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")"/relground-*.dist-info "$work/shadow14/" \
    2>/dev/null || true
  mismatch_case "A: the extension built for .venv's torch, under torch $torch_dist" "$V" "$work/shadow14"
else
  echo "check_other_torch: A skipped: no in-place relground/_C*.so (run scripts/setup.sh first)"; failures+=("A-skipped")
fi
mismatch_case "B: the extension built for torch $torch_dist, under .venv's torch" "$PYTHON" "$work/shadow13"

verdict=PASS; [ "${#failures[@]}" = 0 ] || verdict="FAIL (${failures[*]})"
echo "check_other_torch: $verdict | $(basename "$wheel") | torch $torch_dist | tests/ops: $summary$partial | build ${build_s} s, total $((SECONDS - start)) s"
[ "${#failures[@]}" = 0 ]
