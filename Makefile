# Two commands: `make train` and `make test`. Both create .venv on demand.
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

.PHONY: venv train test clean
venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

train: venv
	$(PY) scripts/train.py $(TRAIN_FLAGS)

test: venv
	$(PY) -m pytest $(PYTEST_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
