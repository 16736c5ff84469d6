# `make train`, `make test` (every test), `make check` (the linter and the fast tier, for
# the edit-test loop), `make lint` and `make docs` (BUILD.md's flag table). Each creates
# .venv on demand; on a GPU machine run `make venv-gpu` first (below).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The original MNIST files live beside the checkout; TFDS builds `mnist` from them
# (it verifies their checksums) when they are given as its manual directory.
SHARED_MNIST := $(abspath ../shared/data/mnist)
ifeq ($(TFDS_MANUAL_DIR),)
ifneq ($(wildcard $(SHARED_MNIST)/SHA256SUMS),)
export TFDS_MANUAL_DIR := $(SHARED_MNIST)
endif
endif
TRAIN_FLAGS ?=
PYTEST_FLAGS ?=

.PHONY: venv venv-gpu train test check lint docs clean
venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# On a machine with NVIDIA GPUs: the same venv plus the `gpu` extra, TensorFlow's CUDA 12
# and cuDNN 9 libraries as pip packages (tensorflow[and-cuda], a few GB). It covers
# `venv` too, so `make train` and `make test` use it as it is.
venv-gpu: $(VENV)/.installed-gpu

$(VENV)/.installed-gpu: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test,gpu]'
	touch $@ $(VENV)/.installed

train: venv
	$(PY) scripts/train.py $(TRAIN_FLAGS)

test: venv
	$(PY) -m pytest $(PYTEST_FLAGS)

# The fast tier: no test that starts a process or trains more than a few steps (those
# are marked slow; BUILD.md, Tests).
check: lint
	$(PY) -m pytest -m 'not slow' $(PYTEST_FLAGS)

lint: venv
	$(VENV)/bin/ruff check .

# BUILD.md's table of training flags, written from their declarations (mnist/config.py).
docs: venv
	$(PY) scripts/docs.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
