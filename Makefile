# Two commands: `make example` and `make test`. Both set up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q "torch==2.13.0"  # CPU build on these machines, before [embed] asks for any torch
	$(BIN)/python -m pip install -q -e ".[cpu,embed,eval,test]"
	touch $@

.PHONY: setup example test
setup: $(BIN)/.installed

example: setup
	$(BIN)/symoe solve examples/questions.jsonl -o questions.answers.jsonl --events questions.events.jsonl

test: setup
	$(BIN)/python -m pytest
