# Everything runs from the project's own .venv; the local stack keeps its state under .var/.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.txt | sha256sum | cut -c1-12)

.PHONY: install up down demo test test-quick bench status clean-var

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@bash scripts/install_system_packages.sh
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

up: install
	@bash scripts/stack.sh up

down:
	@bash scripts/stack.sh down

status:
	@bash scripts/stack.sh status

demo: install
	@bash scripts/stack.sh up
	@bash scripts/stack.sh demo

test: install
	@bash scripts/stack.sh test

test-quick: install
	$(PY) -m pytest -m "not e2e" -q

bench: install
	@bash scripts/stack.sh bench
