# Every target sets up what it needs from nothing: a fresh clone needs only python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck bench clean FORCE

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

test: $(STAMP)
	$(BIN)/ruff check app pubsub tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check app pubsub tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build .progress-data .pytest_cache .mypy_cache .ruff_cache
