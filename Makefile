# Two commands a user needs (README): `make run` and `make test`. Both build .venv from nothing
# but a Python >= 3.11 interpreter; the stamp file makes a second call skip the install.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
CONFIG ?= training/configs/default.yaml
PYTEST_ARGS ?=
UV     ?= uv>=0.13,<0.14
# pytest-xdist workers, each running whole test files (module fixtures are built once): `auto` is
# one per CPU core, 0 runs every test in this process (`make test TEST_WORKERS=0`). Test files are
# isolated from each other's MLflow state (tests/conftest.py), so any file order passes; the
# longest files (tests/file_seconds.json) are handed out first, so that no long file starts last.
TEST_WORKERS ?= auto
FAST_WORKERS ?= auto
# Installed paths `make install` does not byte-compile (a regular expression; see $(STAMP)).
NOT_COMPILED = /tests/|/tensorflow_probability/substrates/|/databricks/sdk/
xdist = $(if $(filter 0,$(1)),,-n $(1) --dist loadfile --no-loadscope-reorder)

.PHONY: run test test-fast install bench bench-all clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "error: vae-tf needs Python >= 3.11; set PYTHON=/path/to/python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs the same pinned stack as pip in about a third of the time (parallel downloads;
	@# docs/performance.md, "The test loop"). It reads no pip configuration, so the package sources
	@# pip is configured with (find-links, index mirrors, certificates) are handed to it
	@# (scripts/uv_pip_options.py). If uv cannot be installed or fails, pip installs instead.
	$(PY) -m pip install --quiet "$(UV)" \
	  && $(VENV)/bin/uv pip install --quiet --python $(PY) $$($(PY) scripts/uv_pip_options.py) -e ".[test,beam]" \
	  || { echo "uv could not install the environment; installing with pip" >&2; \
	       $(PY) -m pip install --quiet --upgrade pip && $(PY) -m pip install --quiet --no-compile -e ".[test,beam]"; }
	@# Neither install above byte-compiles (pip would, on one core); compileall -j 0 compiles the
	@# installed modules on every core (14 s less than pip on 2 CPUs). Left out, as nothing vae-tf
	@# runs imports them (a module imported anyway is compiled at its first import): the packages'
	@# own test suites, TensorFlow Probability's JAX and NumPy substrates and the Databricks SDK
	@# (~25 % of the source; 31 -> 24 s on 2 CPUs). Files that do not compile (templates, Python 2
	@# leftovers in some packages) are skipped, as pip skips them; so its exit status is ignored.
	$(PY) -m compileall -q -j 0 -x '$(NOT_COMPILED)' $(VENV)/lib > /dev/null || true
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/vae-tf train --config $(CONFIG)

test: $(STAMP)
	$(PY) -m pytest $(call xdist,$(TEST_WORKERS)) $(PYTEST_ARGS)

# The edit-test loop: every test but those marked `slow` (suites, clusters, kill-and-resume,
# benchmark smoke runs, the train-and-export matrices, and any other test over ~3 s on 2 CPUs),
# which `make test` (and CI) still runs.
test-fast: $(STAMP)
	$(PY) -m pytest $(call xdist,$(FAST_WORKERS)) -m "not slow" -q -x $(PYTEST_ARGS)

# Benchmarks (docs/performance.md): `make bench` the training throughput (vae-tf, bare Keras,
# PyTorch eager, matmul peak; ~6 min); `make bench-all` every table of the speed-and-scale issue
# (~35 min on 2 CPUs). Each prints its Markdown report with the command that produced it.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[test,beam,bench]"
	$(PY) benchmarks/train_throughput.py --arch conv --rounds 30 --min-epoch-seconds 0.5

bench-all: bench
	$(PY) benchmarks/flops.py --repeats 9
	$(PY) benchmarks/profile_step.py
	$(PY) benchmarks/train_settings.py --rounds 15 --examples 8192
	$(PY) benchmarks/train_processes.py --rounds 9
	$(PY) benchmarks/scaling.py --rounds 5
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/fit_teardown.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
