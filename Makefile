# Two commands do all set-up: `make serve` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_DIR ?= models/default
STAMP := $(VENV)/.installed

.PHONY: install serve test lint format browser clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c requirements.lock -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/mpoxscan serve --model-dir $(MODEL_DIR) --host $(HOST) --port $(PORT)

# Debian's Chromium for the browser tests; never a downloaded browser build.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium fonts-wqy-microhei; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium fonts-wqy-microhei; fi; }

test: $(STAMP) browser
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output

# Known vulnerabilities in the installed packages (pip-audit; accepted ones with reasons in
# .ci/pip-audit-allow.txt). Skips, without failing, when the vulnerability service is out of
# reach: see docs/security.md.
.PHONY: audit-deps
audit-deps: $(STAMP)
	$(BIN)/python .ci/audit_deps.py --venv $(VENV)
