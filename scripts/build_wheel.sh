#!/usr/bin/env bash
# Builds a relground wheel against the torch of an existing environment, without build isolation (the
# pytorch_scatter / torchvision source-build way), from a clean copy of the checkout (the files git tracks or
# would track; never ./build, ./.venv or an in-place relground/_C*.so), so it neither reuses nor disturbs the
# in-place build of scripts/setup.sh.
#
#   bash scripts/build_wheel.sh [OUT_DIR]          # default OUT_DIR: build/wheelhouse
#
# PYTHON: the interpreter whose torch the wheel is built against (default .venv/bin/python).
# The wheel's version carries a local label naming that torch and CUDA: relground-0.1.0+pt214cu130-... with the
# CUDA kernels, +pt214cpu with FORCE_ONLY_CPU=1 (docs/install.md). MAX_JOBS (default 2), FORCE_ONLY_CPU,
# FORCE_CUDA, TORCH_CUDA_ARCH_LIST as for setup.py. Prints the wheel's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
OUT=${1:-build/wheelhouse}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export MAX_JOBS=${MAX_JOBS:-2}

"$PYTHON" -c "import torch" 2>/dev/null || {
  echo "build_wheel: $PYTHON has no torch; install the torch to build against first" >&2; exit 1; }

src=$(mktemp -d "${TMPDIR:-/tmp}/relground-src.XXXXXX")
trap 'rm -rf "$src"' EXIT
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$REPO" ls-files -z -co --exclude-standard \
    | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf - | tar -xf - -C "$src"
else  # an unpacked sdist: everything but build products
  tar --exclude=./.venv --exclude=./build --exclude='*.so' --exclude=__pycache__ -cf - . | tar -xf - -C "$src"
fi

echo "build_wheel: building against $("$PYTHON" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)') (MAX_JOBS=$MAX_JOBS)"
start=$SECONDS
(cd "$src" && "$PYTHON" -m pip wheel --no-build-isolation --no-deps --wheel-dir "$OUT" .)
wheel=$(ls -t "$OUT"/relground-*.whl | head -n 1)
[ -n "$wheel" ] || { echo "build_wheel: no wheel in $OUT" >&2; exit 1; }
# The wheel must hold the extension and a +pt label; print its facts.
"$PYTHON" - "$wheel" <<'PY'
import sys, zipfile
wheel = sys.argv[1]
names = zipfile.ZipFile(wheel).namelist()
so = [n for n in names if n.startswith("relground/_C") and n.endswith(".so")]
assert so, f"{wheel} holds no relground/_C*.so"
version = wheel.rsplit("/", 1)[-1].split("-")[1]
assert "+pt" in version, f"{wheel}: version {version} has no +pt<XY> label"
print(f"build_wheel: version {version}, extension {so[0]}, {len(names)} files")
PY
echo "build_wheel: built in $((SECONDS - start)) s"
echo "$wheel"
