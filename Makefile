# The two commands of the README: `make demo` (main job on embedded data) and `make test`;
# `make docs` builds the documentation site into site/ with warnings as errors (CI runs it).
# Both create the virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= demo_out

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.docs: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

.PHONY: demo test docs install
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/lddmm demo --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m pytest

docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site
