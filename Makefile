# rsretrieval: `make course` runs the whole course offline, `make test` runs the test suite.
# Both create or update the environment in .venv first (`make env`).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rsretrieval-installed
EXTRAS := notebook,test,faiss

# Course parameters, passed through to every notebook (e.g. make course DATASET=rsitmd DATA_DIR=~/data/RSITMD)
DATASET ?=
DATA_DIR ?=
DEVICE ?=
MODEL ?=
PRETRAINED ?=
COURSE_OUT ?= build/course
COURSE_ARGS = $(if $(DATASET),-p DATASET=$(DATASET)) $(if $(DATA_DIR),-p DATA_DIR=$(DATA_DIR)) \
	$(if $(DEVICE),-p DEVICE=$(DEVICE)) $(if $(MODEL),-p MODEL=$(MODEL)) $(if $(PRETRAINED),-p PRETRAINED=$(PRETRAINED))

.PHONY: env test test-gpu course notebooks clean help

help:
	@echo "make course   run every notebook offline into $(COURSE_OUT) (creates .venv if missing)"
	@echo "make test     run the test suite, notebooks included (creates .venv if missing)"
	@echo "make env      create or update .venv"
	@echo "make notebooks  re-pair notebooks/*.ipynb from their py:percent sources"

env: $(STAMP)

# uv installs the pinned torch stack in a fraction of pip's time; pip is the fallback.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv >/dev/null 2>&1 || true
	@if [ -x $(VENV)/bin/uv ]; then \
		$(VENV)/bin/uv pip install --quiet --python $(PY) -e ".[$(EXTRAS)]"; \
	else \
		$(PY) -m pip install -q -e ".[$(EXTRAS)]"; \
	fi
	@$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
	@echo "environment ready in $(VENV)"

test: env
	$(PY) -m pytest -q

test-gpu: env
	RSR_TEST_GPU=1 $(PY) -m pytest -q -m notebook tests/test_notebooks.py

course: env
	$(PY) -m rsretrieval course --out $(COURSE_OUT) $(COURSE_ARGS)

notebooks: env
	$(VENV)/bin/jupytext --sync notebooks/*.py

clean:
	rm -rf build .pytest_cache
