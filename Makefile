# rsretrieval: `make course` runs the whole course offline, `make test` runs the test suite.
# Both create or update the environment in .venv first (`make env`).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rsretrieval-installed


# Course parameters, passed through to every notebook (e.g. make course DATASET=rsitmd DATA_DIR=~/data/RSITMD)
DATASET ?=
DATA_DIR ?=
DEVICE ?=
MODEL ?=
PRETRAINED ?=
COURSE_OUT ?= build/course
ANSWERS ?=
COURSE_ARGS = $(if $(DATASET),-p DATASET=$(DATASET)) $(if $(DATA_DIR),-p DATA_DIR=$(DATA_DIR)) \
	$(if $(DEVICE),-p DEVICE=$(DEVICE)) $(if $(MODEL),-p MODEL=$(MODEL)) $(if $(PRETRAINED),-p PRETRAINED=$(PRETRAINED)) \
	$(if $(ANSWERS),--answers)

.PHONY: env lock test test-gpu course student instructor classroom notebooks clean help

help:
	@echo "make course   run every notebook offline into $(COURSE_OUT) (creates .venv if missing)"
	@echo "make test     run the test suite, notebooks included (creates .venv if missing)"
	@echo "make student  write the student edition of the notebooks (solutions left out) into build/student"
	@echo "make instructor  write the instructor edition (solutions and worked answers) into build/instructor"
	@echo "make classroom  write both editions and execute each into build/classroom (docs/instructor.md)"
	@echo "make env      create or update .venv with the exact versions of requirements-lock.txt"
	@echo "make lock     rewrite requirements-lock.txt from what .venv holds"
	@echo "make notebooks  re-pair notebooks/*.ipynb from their py:percent sources"

env: $(STAMP)

# The exact versions of requirements-lock.txt (uv pip sync: nothing more, nothing less), then the package
# itself without dependencies. pip is the fallback where uv cannot be installed.
$(STAMP): pyproject.toml requirements-lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check uv==0.13.9 >/dev/null 2>&1 || true
	@if [ -x $(VENV)/bin/uv ]; then \
		$(VENV)/bin/uv pip sync --quiet --python $(PY) requirements-lock.txt && \
		$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .; \
	else \
		$(PY) -m pip install -q -r requirements-lock.txt && $(PY) -m pip install -q --no-deps -e .; \
	fi
	@$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $(STAMP)
	@echo "environment ready in $(VENV)"

# Re-lock the course environment from what .venv holds now (after a deliberate upgrade there).
lock: env
	@{ sed -n '1,/^# Re-lock/p' requirements-lock.txt; \
	   $(VENV)/bin/uv pip freeze --python $(PY) --exclude-editable \
	   | sed -E 's/^((nvidia-[^=]+|triton)==.*)$$/\1 ; sys_platform == "linux" and platform_machine == "x86_64"/'; \
	 } > requirements-lock.txt.new && mv requirements-lock.txt.new requirements-lock.txt

# One pytest-xdist worker per core (TEST_WORKERS=0 runs the suite in this process, as plain pytest does);
# worksteal keeps both cores busy while the long notebook runs finish. More options: PYTEST_ARGS="-k serve".
TEST_WORKERS ?= auto
PYTEST_ARGS ?=
test: env
	$(PY) -m pytest -q -rs -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

test-gpu: env
	RSR_TEST_GPU=1 $(PY) -m pytest -q -m notebook tests/test_notebooks.py

course: env
	$(PY) -m rsretrieval course --out $(COURSE_OUT) $(COURSE_ARGS)

# The notebooks to hand out (every solution replaced by a stub) and the teacher's copy
student: env
	$(PY) -m rsretrieval course --edition student --out build/student

instructor: env
	$(PY) -m rsretrieval course --edition instructor --out build/instructor

# Both editions executed as a class meets them (docs/instructor.md): the student's stubs print
# "not done yet", the instructor's worked answers run; about twice `make course`'s time
classroom: student instructor
	$(PY) -m rsretrieval course --notebooks build/student --out build/classroom/student
	$(PY) -m rsretrieval course --notebooks build/instructor --out build/classroom/instructor --answers

notebooks: env
	$(VENV)/bin/jupytext --sync notebooks/*.py

clean:
	rm -rf build .pytest_cache
