#!/usr/bin/env bash
# Build llama.cpp's own server (llama-server) from the sources llama-cpp-python vendors, for
# benchmarks/serve.py's anchor: the same llama.cpp as llmlab runs, built once and cached outside the
# repository (~/.cache/llmlab/llama-server-<version>/llama-server). Only the server target is built,
# without the web UI, curl or SSL: nothing is downloaded but llama-cpp-python's sdist from the package
# registry (pip's cache makes that instant when the install already built it).
# Usage: bash scripts/build_llama_server.sh   (prints the binary's path; ~10 min on 2 cores)
set -euo pipefail
VERSION=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('llama_cpp_python'))")
OUT=${LLMLAB_CACHE:-$HOME/.cache/llmlab}/llama-server-$VERSION
if [ -x "$OUT/llama-server" ]; then echo "$OUT/llama-server"; exit 0; fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
.venv/bin/pip download --quiet --no-deps --no-binary :all: "llama_cpp_python==$VERSION" -d "$WORK" >&2
tar xzf "$WORK"/llama_cpp_python-*.tar.gz -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_python-*/vendor/llama.cpp)
# the same kernels as llmlab's build: on x86-64 without ggml's AMX ones (see LLAMA_CMAKE_ARGS in the Makefile)
NO_AMX=()
case "$(uname -m)" in x86_64|amd64) NO_AMX=(-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8) ;; esac
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF "${NO_AMX[@]}" >&2
cmake --build "$WORK/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$OUT"
cp "$WORK/build/bin/llama-server" "$OUT/llama-server.tmp" && mv "$OUT/llama-server.tmp" "$OUT/llama-server"
echo "$OUT/llama-server"
