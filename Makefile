# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install browser run test test-fast lint bench clean federation-up

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

# The numeric tests a second time as another CPU computes them: torch's, oneDNN's and MKL's
# kernels capped at AVX2 (on a machine without AVX-512, ATen's own kernels are the same and
# oneDNN's and MKL's may differ). Their tolerances come from tests/golden/spread.json, which
# measured this selection among others. It runs beside the whole suite at the lowest
# priority, on the core time the suite leaves idle (its figures do not depend on the load),
# and prints its report at the end.
NUMERIC_TESTS := tests/test_golden.py tests/test_batched.py tests/test_federation.py \
	tests/test_membership.py tests/test_metrics.py
OTHER_CPU := ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

# The suite runs on two workers (pytest-xdist), a test module at a time each, in the order
# tests/conftest.py gives (longest first): while one waits on a browser, Flower's polling and
# timeouts or a job process, the other computes. Every test gets one torch thread.
test: install browser
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	@mkdir -p test-output
	@$(OTHER_CPU) nice -n 19 $(PY) -m pytest $(NUMERIC_TESTS) -p no:cacheprovider \
	    --basetemp=test-output/other-cpu-tmp > test-output/other-cpu.log 2>&1 & other=$$!; \
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder; main=$$?; \
	wait $$other; leg=$$?; \
	echo "=== numeric tests as on another CPU ($(OTHER_CPU)): test-output/other-cpu.log ==="; \
	tail -n 40 test-output/other-cpu.log; \
	test $$main -eq 0 && test $$leg -eq 0

# The unit tests alone, for a quick check while developing (not what CI runs): everything
# not marked slow (tests/conftest.py says what is), without the other-CPU leg.
test-fast: install
	$(PY) -m ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not slow" -q

# A real Flower deployment on this machine: SuperLink + one SuperNode per hospital, the
# experiment, then every process stopped (PRESET=smoke by default).
federation-up: install
	$(VENV)/bin/fedsct run --preset $(or $(PRESET),smoke) --set federation.runtime=flower-deploy

bench: install
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache test-output
