# `make reference` runs the main job on the reference model; `make test` runs the test suite.
# Both install what they need into .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
REF := ../shared/reference
RUN ?= runs/reference

.PHONY: install test test-fast reference reference-model typecheck lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

reference-model: install
	$(BIN)/python $(REF)/get_resnet50.py

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not reference"

reference: reference-model
	$(BIN)/compress run --model "$$($(BIN)/python $(REF)/get_resnet50.py)" --arch resnet50-v1 \
		--data $(REF)/imagenet-val --calib $(REF)/imagenet-calib --out $(RUN) --variants fp32,int8,int8-cpu

typecheck: install
	$(BIN)/python tests/tensorrt_typecheck.py

lint: install
	$(BIN)/ruff check compress calibration tests benchmarks
