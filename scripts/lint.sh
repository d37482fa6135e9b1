#!/usr/bin/env bash
# The linters, as CI runs them (.ci/run, `make lint`): ruff (lint and import order) on the
# whole repository and mypy on the product code, both configured in pyproject.toml and
# pinned in setup.py's dev extra (run `make setup` first). Runs both, then exits non-zero
# if either found anything.
set -uo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
for tool in ruff mypy; do
  if [ ! -x "$VENV/bin/$tool" ]; then
    echo "lint: $VENV/bin/$tool is missing: run make setup" >&2
    exit 2
  fi
done

failed=()
run() {
  echo "lint: $*"
  "$@" || failed+=("$1")
}
run "$VENV/bin/ruff" check .
# mypy resolves the third-party packages of the venv's interpreter; its files are in pyproject.toml.
run "$VENV/bin/mypy" --python-executable "$VENV/bin/python"

if ((${#failed[@]})); then
  echo "lint: failed: ${failed[*]##*/}" >&2
  exit 1
fi
echo "lint: ok"
