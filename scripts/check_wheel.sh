#!/usr/bin/env bash
# Packaging check: builds the relground wheel against .venv's torch (scripts/build_wheel.sh, no build
# isolation), installs it with its dependencies into a fresh throwaway venv holding the same torch, and runs
# tests/ops there against the installed package, not the checkout (a copy of the tests in a temporary folder;
# the run asserts that relground.__file__ lies in the throwaway venv and that the extension loaded).
#
#   bash scripts/check_wheel.sh            # KEEP=1 keeps the temporary folder; FORCE_ONLY_CPU=1: CPU-only wheel
#
# Network: none beyond the package indexes pip is configured with (torch and the dependencies come from them,
# or from pip's cache). Prints a last line "check_wheel: PASS|FAIL ..." with the numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
work=$(mktemp -d "${TMPDIR:-/tmp}/relground-check-wheel.XXXXXX")
cleanup() { if [ "${KEEP:-0}" = 1 ]; then echo "check_wheel: kept $work"; else rm -rf "$work"; fi; }
trap cleanup EXIT
start=$SECONDS

# shellcheck source=scripts/_ops_tests.sh
. "$REPO/scripts/_ops_tests.sh"

torch_dist=$("$PYTHON" -c "from importlib.metadata import version; print(version('torch'))")
echo "check_wheel: building the wheel against torch $torch_dist ($PYTHON)"
bash scripts/build_wheel.sh "$work/wheelhouse" | tee "$work/build.log"
wheel=$(tail -n 1 "$work/build.log")
build_s=$((SECONDS - start))

base=$("$PYTHON" -c "import sys; print(sys._base_executable)")
"$base" -m venv "$work/venv"
V=$work/venv/bin/python
echo "torch==$torch_dist" > "$work/constraints.txt"  # the same torch, whatever the wheel's dependencies allow
test_reqs=$(grep -E '^(pytest|hypothesis|expecttest)==' requirements.txt | tr '\n' ' ')
echo "check_wheel: installing torch==$torch_dist, $(basename "$wheel") and $test_reqs into $work/venv"
"$V" -m pip install -q -c "$work/constraints.txt" "torch==$torch_dist"
"$V" -m pip install -q -c "$work/constraints.txt" "$wheel" $test_reqs
# from $work: in the checkout, ./relground would shadow the installed package
(cd "$work" && "$V" -c "import relground, torch, importlib.metadata as m; print('check_wheel: relground', m.version('relground'), 'at', relground.__file__, '| torch', torch.__version__, '| build_info', relground.build_info())")

set +e
run_ops_tests "$V" "$work/venv" "$work/t" 2>&1 | tee "$work/pytest.log"
rc=${PIPESTATUS[0]}
set -e
summary=$(grep -E '(passed|failed|error)' "$work/pytest.log" | tail -n 1)
verdict=PASS; [ "$rc" = 0 ] || verdict=FAIL
echo "check_wheel: $verdict | $(basename "$wheel") | torch $torch_dist | tests/ops: $summary | build ${build_s} s, total $((SECONDS - start)) s"
exit "$rc"
