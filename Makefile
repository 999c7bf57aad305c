# Every target creates or reuses the local venv, so any of them works first on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fercli-installed

.PHONY: install test test-fast demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

## Full test suite: math, CLI and real-data tests (real-data ones skip without ../shared/datasets).
## TEST_WORKERS pytest-xdist workers share the cores (tests/conftest.py gives each its share);
## worksteal keeps them busy to the end, though a few tests take a minute. 3 on 2 cores fills
## the gaps while tests wait on child processes (times: docs/development.md).
## TEST_WORKERS=0: serial.
## Test temp files (checkpoints of hundreds of MB, written and fsynced) go to RAM when /dev/shm
## has 8 GB free: the disk's write-back is then no part of the suite's time. TEST_TMPDIR= keeps TMPDIR.
TEST_WORKERS ?= 3
TEST_TMPDIR ?= $(shell [ -d /dev/shm ] && [ -w /dev/shm ] && \
	[ "$$(df -Pk /dev/shm | awk 'NR==2 {print $$4}')" -gt 8000000 ] 2>/dev/null && echo /dev/shm)
test: $(STAMP)
	$(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR)) \
	$(PY) -m pytest -q -ra $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist worksteal)

## Without the slow real-data tests.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not realdata"

## The main job on the bundled default: classify the sample photos with the shipped model.
demo: $(STAMP)
	$(VENV)/bin/fer predict sample_images/ --annotate demo_out
	@echo "Annotated images are in demo_out/"

lint: $(STAMP)
	$(PY) -m ruff check fercli tests devtools

bench: $(STAMP)
	$(VENV)/bin/fer bench --device cpu

clean:
	rm -rf demo_out .pytest_cache .ruff_cache
