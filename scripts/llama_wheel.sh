#!/usr/bin/env bash
# Compile llama-cpp-python (the version constraints.txt pins) once for this CPU and these CMAKE_ARGS, and
# print the folder holding its wheel: `make install` and `make wheelhouse` install it from there.
#
# Why not pip's own wheel cache: it keys a wheel it built by the source alone, not by the build flags nor
# the CPU, and llama.cpp compiles with -march=native. A wheel cached on another machine (other
# instructions) or built with other flags (ggml's AMX kernels, see LLAMA_CMAKE_ARGS in the Makefile) would
# be reused and crash. Here the folder is named after the version, the flags, the Python and the CPU's
# features, under pip's cache folder (kept wherever pip's cache is kept, e.g. on CI).
# Called by the Makefile with BIN and CMAKE_ARGS set.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
version=$(sed -n 's/^llama_cpp_python==//p' constraints.txt)
key=$({ echo "$version ${CMAKE_ARGS:-}"; "$BIN/python" -V; uname -m
        grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features 2>/dev/null || true; } |
      "$BIN/python" -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
root="$("$BIN/pip" cache dir 2>/dev/null || echo "$HOME/.cache/llmlab")/llmlab-llama-cpp"
dir="$root/$version-$key"
if ! compgen -G "$dir/llama_cpp_python-*.whl" >/dev/null; then
  echo "== compiling llama-cpp-python $version for this CPU (5-12 min on 2 cores; once, kept in $dir)" >&2
  mkdir -p "$root"
  tmp=$(mktemp -d "$root/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  # --no-cache-dir: never a wheel pip cached from another build of the same source
  "$BIN/pip" wheel --quiet --no-deps --no-cache-dir "llama_cpp_python==$version" -w "$tmp" >&2
  rm -rf "$dir" && mv "$tmp" "$dir"  # whole or not at all
fi
echo "$dir"
