# wshub — two commands for a newcomer:
#   make demo   set up .venv and serve the demo chat on http://127.0.0.1:8080
#   make test   install everything the tests need and run the whole suite
#
# Other targets: make lint, make fuzz (long fuzzing run), make conformance
# (full Autobahn report), make docs, make bench.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip

.PHONY: demo test lint docs pytest conformance-setup conformance-gate conformance-docs system-deps node-deps venv fuzz conformance clean bench bench-quick

venv: $(VENV)/.stamp-deps

$(VENV)/.stamp-deps: pyproject.toml setup.py src/wshub/_speedups.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev,tls]'
	@touch $@

demo: venv
	$(VENV)/bin/wshub demo

# System packages the tests drive: Chromium (browser tests) and redis-server.
# Installed with apt-get when we are root; otherwise the tests that need them
# fail with a message saying what is missing.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v node >/dev/null 2>&1 || missing="$$missing nodejs"; \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "warning: missing$$missing (not root: the tests that need them will fail and say so)"; \
	  fi; \
	fi

node-deps: tests/node/node_modules/.stamp

tests/node/node_modules/.stamp: tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --silent
	@touch $@

lint: venv
	$(VENV)/bin/ruff check src tests examples tools bench
	$(VENV)/bin/ruff format --check src tests examples tools bench
	$(VENV)/bin/mypy

# The documentation, built as strictly as MkDocs can: a broken link, a nav
# entry to a missing page or an API reference that does not resolve fails.
docs: venv
	$(VENV)/bin/mkdocs build --strict --quiet

# pytest's exit code 5 (no tests collected) is a failure, not a pass.
PYTEST_RUN = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

pytest: venv node-deps
	@$(VENV)/bin/pytest -m "not conformance" $(PYTEST_ARGS); $(PYTEST_RUN)
	@echo "== the protocol tests again on the pure-Python path (WSHUB_NO_EXTENSIONS=1)"
	@WSHUB_NO_EXTENSIONS=1 $(VENV)/bin/pytest -q -m "not conformance" tests/protocol \
	  --ignore=tests/protocol/test_accelerator.py $(PYTEST_ARGS); $(PYTEST_RUN)
	@echo "== the transport tests again on the event loop's transports (--io loop)"
	@$(VENV)/bin/pytest -q -m "not conformance" --io loop tests/transport \
	  tests/integration/test_security_backpressure.py tests/integration/test_api_lifecycle.py \
	  $(PYTEST_ARGS); $(PYTEST_RUN)

# Autobahn|Testsuite's wstest (Python 2.7) in .cache/autobahn, pinned in
# tools/autobahn/requirements-py2.txt; a second run only checks it.
conformance-setup: venv
	@$(PY) tools/autobahn/wstest_env.py >/dev/null

# The Autobahn gate takes minutes: `make test` runs it beside the other tests.
conformance-gate: venv conformance-setup
	@$(VENV)/bin/pytest -m conformance -s -p no:cacheprovider tests/conformance; $(PYTEST_RUN)

conformance-docs: venv conformance-setup
	$(PY) tools/conformance.py --pure-selection full --write-docs docs/conformance.md

test: system-deps venv node-deps lint docs
	@$(MAKE) --no-print-directory -j2 --output-sync=target pytest conformance-gate

fuzz: venv
	WSHUB_FUZZ_EXAMPLES=20000 $(VENV)/bin/pytest -q tests -m fuzz -p no:randomly

conformance: venv conformance-setup
	$(PY) tools/conformance.py

# The project's own benchmark (bench/README.md, docs/performance.md): bench/run.py
# after `make -C bench setup` (bench/.venv, bench/node, the C load generator).
# make bench: 3 trials (~15 min); make bench-quick: 1 trial (a few minutes);
# options: make bench BENCH_ARGS="--servers wshub,websockets --scenarios S1 --nice -10"
bench bench-quick:
	@$(MAKE) --no-print-directory -C bench setup PYTHON=$(PYTHON)
	$(PYTHON) bench/run.py $(if $(filter bench-quick,$@),--quick) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) tests/node/node_modules .mypy_cache .ruff_cache .pytest_cache reports
