# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser run test lint bench clean federation-up

install: $(STAMP)

# torch first, pinned: an unpinned torch (pulled by monai) would fetch a multi-GB CUDA build.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The browser tests drive Debian's chromium (never `playwright install`: it downloads).
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: 'sudo apt-get install -y chromium' enables the browser tests"; fi; }

run: install
	$(VENV)/bin/fedsct dashboard

test: install browser
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

# A real Flower deployment on this machine: SuperLink + one SuperNode per hospital, the
# experiment, then every process stopped (PRESET=smoke by default).
federation-up: install
	$(VENV)/bin/fedsct run --preset $(or $(PRESET),smoke) --set federation.runtime=flower-deploy

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
