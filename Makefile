# Two commands set up a fresh machine: `make demo` and `make test`.
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_DATA := runs/data/shakespeare-char
DEMO_OUT  := runs/shakespeare-char

.PHONY: install demo test test-slow clean

install: $(STAMP)

# pip's "Location ... is ignored" lines are noise from local package mirrors, not errors.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $(STAMP)

# Train the default character-level GPT on the bundled Shakespeare corpus, evaluate it, print samples.
demo: $(STAMP)
	$(BIN)/arlm prepare data/shakespeare --out $(DEMO_DATA) --tokenizer char
	$(BIN)/arlm train --config configs/shakespeare_char.toml --data $(DEMO_DATA) --out $(DEMO_OUT) --overwrite
	$(BIN)/arlm eval --model $(DEMO_OUT) --data data/shakespeare/winters_tale.txt
	$(BIN)/arlm generate --model $(DEMO_OUT) --prompt "ROMEO." --max-new-tokens 300 \
		--temperature 0.8 --top-k 40 --seed 1 --num-return-sequences 2

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
