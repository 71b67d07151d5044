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

.PHONY: install train cv test test-fast lint format bench results docs clean

# The venv sees the system's packages, so a torch already installed (a CUDA build, say) is used
# as it is. Only when none is importable is torch pinned: an unpinned `torch` would pull several
# GB of CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install "torch==$(TORCH_VERSION)"
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: install
	$(COVIDREG) fetch
	$(COVIDREG) train

cv: install
	$(COVIDREG) fetch
	$(COVIDREG) cv --folds 5

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not realdata" -x -q

lint: install
	$(VENV)/bin/ruff check covidreg tests bench
	$(VENV)/bin/ruff format --check covidreg tests bench

format: install
	$(VENV)/bin/ruff format covidreg tests bench
	$(VENV)/bin/ruff check --fix covidreg tests bench

# `make bench BENCH_ARGS=--quick` for a smoke run; BENCH_ARGS="--reference none" skips the
# reference commit.
bench: install
	$(PY) bench/bench.py --data-dir "$(COVIDREG_DATA_DIR)" $(BENCH_ARGS)

# Rewrites the config reference of README.md from covidreg/config.py.
docs: install
	$(PY) -c "import re, pathlib; from covidreg.config import config_reference as ref; \
	p = pathlib.Path('README.md'); t = p.read_text(); \
	p.write_text(re.sub(r'(<!-- config:start -->).*?(<!-- config:end -->)', \
	lambda m: m.group(1) + chr(10) + ref() + chr(10) + m.group(2), t, flags=re.S))"

# Rewrites the Results tables (blocked 5-fold cv and the future and past hold-outs x 3 seeds,
# on the 2021 and the 2022 files).
results: install
	$(PY) bench/results.py --data-dir "$(COVIDREG_DATA_DIR)" --data-dir-2022 "$(COVIDREG_DATA_DIR_2022)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
