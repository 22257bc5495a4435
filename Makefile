# shieldkit — two entry points: `make demo` (the main job) and `make test` (the suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo demo-quick test lint bench clean-venv

$(BIN)/python:
	@command -v $(PY) >/dev/null 2>&1 || { echo "python3.11 not found (set PY=...)"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Reinstall when the dependency list changes. torch/torchvision come from the local wheel cache.
$(STAMP): pyproject.toml requirements-extra.txt | $(BIN)/python
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q -r requirements-extra.txt
	# torchattacks pins requests~=2.25 (an old, vulnerable release); its code needs only torch/numpy/scipy.
	$(BIN)/pip install -q --no-deps torchattacks==3.5.1
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shieldkit demo $(DEMO_ARGS)

demo-quick: $(STAMP)
	$(BIN)/shieldkit demo --quick

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

clean-venv:
	rm -rf $(VENV)
