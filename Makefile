# Two entry points (see README): `make demo` and `make test`. Both create the venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: demo test test-all install dev clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: $(VENV)/.installed
	$(VENV)/bin/xvl demo --out runs/demo

test: $(VENV)/.dev-installed
	$(PY) -m pytest -q -ra

# everything, including slow and multi-minute tests
test-all: $(VENV)/.dev-installed
	$(PY) -m pytest -q -ra -m ""

clean:
	rm -rf runs build *.egg-info
