# The two set-up commands of the README:
#   make demo   installs what is missing, then runs `framestream demo`
#   make test   installs what is missing, then runs the test suite
# Both are idempotent: a second run only does what changed.

PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test setup bench clean

# The environment is rebuilt only when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --editable '.[test]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/framestream demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/python -m pytest $(TEST_ARGS)

bench: setup
	$(VENV)/bin/python benchmarks/produce_throughput.py
	$(VENV)/bin/python benchmarks/pipeline_vs_detector.py

clean:
	rm -rf $(VENV) out .pytest_cache
