#!/usr/bin/env bash
# Runs the layer contract and the whole test suite as CI does, printing the time of each phase.
# pytest's exit code 5 ("no tests collected") is not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
start=$(date +%s)
# The layer contract (pyproject.toml, [tool.importlinter]) first: an upward import fails in seconds.
echo "== layers: lint-imports"
"$BIN/lint-imports" --no-cache || { echo "== layers: an import breaks the layer contract (docs/architecture.md)"; exit 1; }
echo "== tests: start $(date -u +%H:%M:%S)"
"$BIN/python" -m pytest "$@"
rc=$?
echo "== tests: ${rc} exit code, $(( $(date +%s) - start )) s"
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
