# Two entry points (see README): `make quickstart` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The PyTorch pins used by CI; on a CUDA machine PyPI's wheels of these versions are CUDA builds.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install quickstart test clean
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (osessl)" >/dev/null
	touch $@

quickstart: install
	$(BIN)/python -m osessl_core quickstart

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache

# The paper notebooks, headless (scripts/run_notebooks.py; see notebooks/README.md). Full budget by default, which
# needs a CUDA GPU: `make reproduce ARGS="--smoke"` for the CPU smoke run, ARGS="table7 -p EPOCHS=100" for a subset.
.PHONY: reproduce
reproduce: install
	$(BIN)/python scripts/run_notebooks.py $(ARGS)
