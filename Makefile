# The two commands: `make demo` runs the demo, `make test` runs every check and test.
# Both install what they need first (scripts/bootstrap).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-browser demo test test-slow unit integration lint typecheck schemas docs docs-serve bench bench-alerts crash soak clean

setup:
	@./scripts/bootstrap

# the test command also needs Debian's chromium for the dashboard's browser test
setup-browser:
	@WITH_BROWSER=1 ./scripts/bootstrap

demo: setup
	$(PY) -m streams.cli demo

test: setup-browser lint typecheck
	$(PY) -m streams.cli schemas --check
	$(PY) -m streams.cli docs-reference --check
	$(PY) -m pytest -m "not slow" --durations=30

# the long crash and outage simulations (SIGKILLed workers, a 30 s Redis outage, a frozen broker)
test-slow: setup-browser
	$(PY) -m pytest -m slow

unit: setup
	$(PY) -m pytest -m "not integration and not browser and not wheel"

integration: setup
	$(PY) -m pytest -m integration

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: setup
	$(VENV)/bin/mypy

schemas: setup
	$(PY) -m streams.cli schemas

# the docs site (mkdocs-material), strictly: a broken link or anchor fails; into site/ (git-ignored)
docs: setup
	$(PY) -m streams.cli docs-reference
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict

# one run of every contender on the same traffic; writes bench/results/latest.json (5-10 min)
bench: setup
	$(PY) -m bench.run

# alert detection at 2, 10, 50 and 500 entries a day: cusum beside the windowed Fisher rule (~1 h)
bench-alerts: setup
	$(PY) -m bench.alert_detection --seeds 40 --volumes 10 --processes 2 --out bench/results/alert_detection_10.json
	$(PY) -m bench.alert_detection --seeds 16 --volumes 500,50,2 --processes 2 --out bench/results/alert_detection_others.json

# SIGKILL the worker 20 times during a 200k-event replay; compare with an undisturbed run (~15 min)
crash: setup
	$(PY) -m bench.crash

# 10 minutes of live traffic at half the measured rate: RSS and lag (~12 min)
soak: setup
	$(PY) -m bench.soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache var site
