# Two commands set up a fresh machine: `make demo` and `make test`.
SHELL  := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_DATA := runs/data/shakespeare-char
DEMO_OUT  := runs/shakespeare-char

.PHONY: install system-packages demo test test-slow clean

install: $(STAMP)

# pip's "Location ... is ignored" lines are noise from local package mirrors, not errors.
# An editable install leaves out arlm-lm-eval.pth (what lets `lm_eval --model arlm` find arlm; a wheel
# has it, see setup.py): it is copied into the environment's site-packages here.
$(STAMP): pyproject.toml setup.py arlm-lm-eval.pth
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]" 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/python -c "import shutil, sysconfig; shutil.copy('arlm-lm-eval.pth', sysconfig.get_paths()['purelib'])"
	touch $(STAMP)

# Train the default character-level GPT on the bundled Shakespeare corpus, evaluate it, print samples.
demo: $(STAMP)
	$(BIN)/arlm prepare data/shakespeare --out $(DEMO_DATA) --tokenizer char
	$(BIN)/arlm train --config configs/shakespeare_char.toml --data $(DEMO_DATA) --out $(DEMO_OUT) --overwrite
	$(BIN)/arlm eval --model $(DEMO_OUT) --data data/shakespeare/winters_tale.txt
	$(BIN)/arlm generate --model $(DEMO_OUT) --prompt "ROMEO." --max-new-tokens 300 \
		--temperature 0.8 --top-k 40 --seed 1 --num-return-sequences 2

# Debian packages features need (chromium: the browser tests of the web page; espeak-ng: the speech `arlm audio synthesize` makes). Installed with apt
# when missing and running as root; otherwise the tests that need them skip and say why.
SYSTEM_PACKAGES := chromium espeak-ng

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing with apt"; \
			(apt-get install -y -q $$missing >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q $$missing >/dev/null)) \
				|| echo "could not install$$missing: the tests that need it will skip"; \
		else echo "missing$$missing (not root, or no apt): the tests that need it will skip"; fi; \
	fi

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

test-slow: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf runs .pytest_cache
