#!/usr/bin/env bash
# The first `make quickstart` on a fresh machine. Compiling llama-cpp-python is most of the install, and
# the quickstart's first step, the demo model's build, needs only torch: so the demo model is built first,
# then llama-cpp-python compiles (`make install`), and the recipe skips the build it finds current.
# The first artifact came 6 minutes sooner on 2 cores (511 s against 880 s). Building and compiling at once
# gave it later (554 s) and no shorter run: they fight for the same cores (benchmarks/results/quickstart.json).
# Called by `make quickstart` with BIN and TORCH (pip arguments) set.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
venv=$(dirname "$BIN")
t0=$(date +%s)
say() { echo "== first run, $(( $(date +%s) - t0 )) s: $1"; }

# shellcheck disable=SC2086  # TORCH holds pip arguments
"$BIN/pip" install --quiet $TORCH
# constraints.txt is the tested, already resolved set: everything in it but llama-cpp-python, then llmlab
grep -v '^llama_cpp_python==' constraints.txt > "$venv/constraints-but-llama.txt"
"$BIN/pip" install --quiet --no-deps -r "$venv/constraints-but-llama.txt"
"$BIN/pip" install --quiet --no-deps --no-build-isolation -e .
say "Python packages installed; building the demo model before llama-cpp-python compiles"
"$BIN/llmlab" build-demo  # recipes/quickstart.yaml's first step, with the same settings
say "the demo model is ready (llmlab models ls; llmlab chat demo). Now compiling llama-cpp-python (~5 min on 2 cores)"
