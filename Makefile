# covidreg: `make train` sets everything up and trains; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
COVIDREG := $(VENV)/bin/covidreg
STAMP := $(VENV)/.installed
# The real HW01 files for the real-data tests and the commands' default paths (CI points these
# at ../shared/hw01 and ../shared/hw01-2022).
export COVIDREG_DATA_DIR ?= $(CURDIR)/data
export COVIDREG_DATA_DIR_2022 ?= $(CURDIR)/data/2022
TORCH_VERSION ?= 2.13.0
# Which edition make train and make cv use: auto (the one in the data directory), 2021, 2022, 2023.
EDITION ?= auto

.PHONY: install train cv test test-fast lint format bench results docs docs-build clean

# The venv sees the system's packages, so a torch already installed (a CUDA build, say) is used
# as it is. Only when none is importable is torch pinned: an unpinned `torch` would pull several
# GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# `make train` trains on whichever edition's files the data directory holds, fetching the 2021
# files only when it holds none; `make train EDITION=2023` fetches and trains on that edition's
# (a file of another edition is never fetched over).
train: install
	$(COVIDREG) fetch --if-missing --edition $(EDITION)
	$(COVIDREG) train --edition $(EDITION)

cv: install
	$(COVIDREG) fetch --if-missing --edition $(EDITION)
	$(COVIDREG) cv --folds 5 --edition $(EDITION)

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not realdata" -x -q

lint: install
	$(VENV)/bin/ruff check covidreg tests bench docs
	$(VENV)/bin/ruff format --check covidreg tests bench docs

format: install
	$(VENV)/bin/ruff format covidreg tests bench docs
	$(VENV)/bin/ruff check --fix covidreg tests bench docs

# `make bench BENCH_ARGS=--quick` for a smoke run; BENCH_ARGS="--reference none" skips the
# reference commit.
bench: install
	$(PY) bench/bench.py --data-dir "$(COVIDREG_DATA_DIR)" $(BENCH_ARGS)

# Reruns every command the docs show on $(COVIDREG_DATA_DIR) and $(COVIDREG_DATA_DIR_2022)
# (docs/gen_outputs.py: about two minutes on 2 cores; writes docs/generated/, docs/images/ and
# README.md's outputs), then builds the site into site/.
docs: install
	$(PY) docs/gen_outputs.py --data-dir "$(COVIDREG_DATA_DIR)" --data-dir-2022 "$(COVIDREG_DATA_DIR_2022)"
	$(MAKE) docs-build

# The site from the committed outputs, as CI builds it: a broken link, a missing page or an
# unresolved API reference fails.
docs-build: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Rewrites the Results tables of docs/results.md (blocked 5-fold cv and the future and past
# hold-outs x 3 seeds, on the 2021 and the 2022 files).
results: install
	$(PY) bench/results.py --data-dir "$(COVIDREG_DATA_DIR)" --data-dir-2022 "$(COVIDREG_DATA_DIR_2022)"

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .ruff_cache .hypothesis
