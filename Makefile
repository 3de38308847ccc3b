# Two entry points: `make test` and `make bench`. Each creates the virtualenv if
# missing, installs the pinned stack, builds our TensorFlow ops, then runs pytest.
PYTHON ?= python3.11
VENV ?= .venv
TF ?= 2.21
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-tf$(TF)
PYTEST_ARGS ?=
# plain pytest: the harness's plugin pins its own TensorFlow server to loopback
PYTEST := $(VENV)/bin/pytest

.PHONY: help install ops test bench report clean

help:
	@echo "make test   - set up, build ops, run the unit/property/integration tests"
	@echo "make bench  - set up, build ops, run the benchmark suite (pytest bench/)"
	@echo "make report - rebuild results/report.md from the saved JSON"

$(STAMP): pyproject.toml constraints/tf-$(TF).txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints/tf-$(TF).txt -e '.[test]'
	@touch $@

install: $(STAMP)

ops: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -m harness.tfe.ops

test: ops
	$(PYTEST) tests $(PYTEST_ARGS)

bench: ops
	$(PYTEST) bench $(PYTEST_ARGS)

report: $(STAMP)
	$(PY) -m harness report

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks
