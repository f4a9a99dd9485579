#!/usr/bin/env bash
# API reference of relground's public packages, generated from the docstrings by pdoc (requirements.txt).
# Usage: scripts/build_docs.sh [OUT_DIR]      (default docs/_build/api; not committed, see .gitignore)
# Open OUT_DIR/index.html. The guides are Markdown in docs/ (docs/using-the-ops.md: the ops in your model).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${1:-docs/_build/api}
rm -rf "$OUT"
# One page per public package (relground.ops through relground's __all__), showing its __all__ (tests/public_api.txt):
# the names re-exported there are documented on the package's page. Google-style docstrings.
# (pdoc cannot follow the lazy relground.Grounder: it is documented at relground.api.Grounder.)
LOG=$(mktemp); trap 'rm -f "$LOG"' EXIT
status=0
"$PYTHON" -m pdoc --docformat google --no-show-source --output-directory "$OUT" \
    relground relground.api relground.data relground.evaluation relground.losses relground.language \
    relground.structures relground.utils relground.config relground.model relground.engine 2>"$LOG" || status=$?
grep -v "'Grounder' in relground.__all__" "$LOG" >&2 || true
[ "$status" -eq 0 ] || { echo "pdoc failed (exit $status)" >&2; exit "$status"; }
echo "API reference: $OUT/index.html ($(find "$OUT" -name '*.html' | wc -l) pages)"
