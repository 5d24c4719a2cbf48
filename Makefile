# Two entry points, both idempotent: `make demo` (install + main job) and `make test`
# (install + the whole test suite; it installs Debian's headless Chromium for the rendered-page
# test when the machine has none: tools/ensure-chromium).  The virtual environment is rebuilt
# only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[test]"
	touch $@

.PHONY: install demo test
install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/m2ad run --protocol invariant

test: $(VENV)/.installed
	tools/ensure-chromium
	$(BIN)/python -m pytest -q
