# Every target sets up what it needs from nothing: a fresh clone needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-tools lint typecheck bench clean FORCE

# The editable install is setuptools' "strict" mode: a tree of links under build/ that maps
# app/ to `progress_hub` and static/ to `progress_hub/static`, as the wheel installs them,
# and that mypy can follow. It lists files, so a module added or removed reinstalls
# (MODULES changes whenever the set of files does).
MODULES := $(VENV)/.modules
SOURCES := $(sort $(wildcard app/*.py pubsub/*.py pubsub/*/*.py pubsub/lua/*.lua static/*))

$(STAMP): pyproject.toml $(MODULES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=strict
	@# `python -m bench` from any directory: the venv sees bench/ (and only bench/, not the
	@# whole repository, which would bypass the strict install) through a .pth file.
	mkdir -p $(VENV)/dev-path && ln -sfn $(CURDIR)/bench $(VENV)/dev-path/bench
	echo '$(CURDIR)/$(VENV)/dev-path' > "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/progress-hub-dev.pth"
	touch $(STAMP)

$(MODULES): FORCE
	@mkdir -p $(VENV)
	@echo '$(SOURCES)' | cmp -s - $@ || echo '$(SOURCES)' > $@

FORCE:

install: $(STAMP)

run: $(STAMP)
	$(BIN)/progress-hub serve --demo

# The suite runs in two pytest-xdist workers: most of a test's time is spent waiting on
# hubs, streams and child processes, which leaves a core idle. Each worker takes whole files
# (a module's fixtures, such as its Celery workers, start once) in collection order, which
# keeps the browser tests after all others on each worker (tests/browser/conftest.py);
# `stress` and `alone` tests run while the other worker waits (tests/machine.py).
PYTEST_WORKERS ?= 2

test: $(STAMP) test-tools
	$(BIN)/ruff check app pubsub tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder

# What the browser and JavaScript tests drive: Debian's Chromium (Playwright launches
# /usr/bin/chromium, never a downloaded build), node and npm (React for the hook test).
# Installed when missing and apt can (root); otherwise one line says what will skip.
# Under CI=true a skipped test fails the run instead (tests/conftest.py).
TOOLS := /usr/bin/chromium:chromium /usr/bin/node:nodejs /usr/bin/npm:npm
MISSING = $(foreach tool,$(TOOLS),$(if $(wildcard $(word 1,$(subst :, ,$(tool)))),,$(word 2,$(subst :, ,$(tool)))))

test-tools:
	@missing='$(strip $(MISSING))'; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing $$missing from Debian for the browser and JavaScript tests"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; } || \
	    echo "make: apt-get could not install $$missing: the browser tests will be skipped"; \
	else \
	  echo "make: no $$missing here: the browser tests will be skipped (get them with: sudo apt-get install $$missing)"; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check app pubsub tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build .progress-data .pytest_cache .mypy_cache .ruff_cache
