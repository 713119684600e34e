# Every target sets up what it needs: a fresh machine can run `make demo` or `make test` directly.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo serve test test-fast lint bench clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c requirements-lock.txt -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# Chromium, Orthanc, dcmtk... for the browser and DICOM tests (installs what is missing when it
# can, else says what is missing and carries on: those tests then skip with the reason).
system-deps:
	scripts/install-system-deps.sh

demo: $(STAMP)
	$(BIN)/xraytriage demo --output out/demo

serve: $(STAMP)
	$(BIN)/xraytriage serve --data-dir out/serve

# ruff, then the import rules of .importlinter (the layers of docs/design.md)
lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/ruff format --check src tests bench scripts
	$(BIN)/lint-imports

test: lint system-deps
	$(BIN)/python -m pytest -q

# the fast tier while you work: every test but the @slow system ones (real server processes,
# browsers, Orthanc/dcmtk, PostgreSQL, training runs); `make test` still runs everything
test-fast: lint
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) out runs .pytest_cache .ruff_cache
