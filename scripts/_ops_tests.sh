# Sourced by scripts/check_wheel.sh and scripts/check_other_torch.sh (needs $REPO): one way to run tests/ops
# against an installed relground rather than the checkout.
# shellcheck shell=bash

# Runs tests/ops from a copy of the tests with the given interpreter; the relground imported must lie under $2.
run_ops_tests() {
  local py=$1 expect_under=$2 dir=$3
  mkdir -p "$dir/tests"
  cp "$REPO"/tests/__init__.py "$REPO"/tests/conftest.py "$REPO"/tests/utils.py "$dir/tests/"
  cp -r "$REPO/tests/ops" "$dir/tests/ops"
  rm -rf "$dir/tests/ops/__pycache__"
  printf '[pytest]\nmarkers =\n    needs_cuda: needs a CUDA device\n    needs_shared_data: needs ../shared/data\n    slow: slow\n' \
    > "$dir/pytest.ini"
  cat >> "$dir/tests/conftest.py" <<'PY'


def pytest_report_header(config):  # appended by scripts/check_*.sh: test the installed relground, with its extension
    import importlib.metadata
    import os

    import relground

    expected = os.path.realpath(os.environ["RELGROUND_EXPECT_UNDER"])
    assert os.path.realpath(relground.__file__).startswith(expected), f"{relground.__file__} not under {expected}"
    assert relground.HAS_OPS, "relground._C did not load"
    return f"relground under test: {relground.__file__} ({importlib.metadata.version('relground')}), HAS_OPS=True"
PY
  (cd "$dir" && env -u PYTHONPATH RELGROUND_EXPECT_UNDER="$expect_under" "$py" -m pytest tests/ops -q -p no:cacheprovider \
    "${PYTEST_EXTRA[@]}")
}
PYTEST_EXTRA=()
