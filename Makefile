# Two commands a user needs (README): `make run` and `make test`. Both build .venv from nothing
# but a Python >= 3.11 interpreter; the stamp file makes a second call skip the install.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
CONFIG ?= training/configs/default.yaml
PYTEST_ARGS ?=

.PHONY: run test install bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: vae-tf needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vae-tf train --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,bench]"
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
