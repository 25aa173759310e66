# Two commands: `make run` (embedded demo) and `make test` (the whole suite).
SHELL := /bin/bash
# Django 6 needs Python 3.12 or newer: take the first one found.
PYTHON ?= $(shell for p in python3.13 python3.12 /root/.pyenv/versions/3.13.*/bin/python3 /root/.pyenv/versions/3.12.*/bin/python3 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint venv bench clean

$(BIN)/.installed: pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.12 or newer is required."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo --refresh
	$(BIN)/python manage.py seed_demo_cutover --refresh
	$(BIN)/python manage.py seed_demo_backups --refresh
	DEBUG=$${DEBUG:-1} METRICS_PUBLIC=$${METRICS_PUBLIC:-1} DEMO_LIVE=$${DEMO_LIVE:-1} \
		$(BIN)/python manage.py runserver $(HOST):$(PORT)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) db.sqlite3 var
