# Two entry points (see README): `make quickstart` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The PyTorch pins used by CI; on a CUDA machine PyPI's wheels of these versions are CUDA builds.
TORCH  ?= torch==2.14.1 torchvision==0.29.1

# lightly is a test-only dependency (its losses are the reference for the Table 1 baselines); installed without
# its hard dependencies (pytorch_lightning, hydra-core), which lightly.loss does not import.
LIGHTLY ?= lightly==1.6.0
# The TORCH value of the last install is kept in .torch-spec (rewritten only when it changes), so
# `make install TORCH=...` rebuilds the venv with the new build instead of saying "Nothing to be done".
TORCH_SPEC := .torch-spec
$(shell [ "$$(cat $(TORCH_SPEC) 2>/dev/null)" = "$(TORCH)" ] || echo "$(TORCH)" > $(TORCH_SPEC))

.PHONY: install quickstart test clean
install: $(VENV)/.installed

$(VENV)/.torch: $(TORCH_SPEC)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q -e ".[notebooks,dev]"
	$(BIN)/python -m pip install -q --no-deps $(LIGHTLY)
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (osessl)" >/dev/null
	touch $@

quickstart: install
	$(BIN)/python -m osessl_core quickstart

test: install
	$(BIN)/python -m pytest -q --durations=25

clean:
	rm -rf $(VENV) runs .pytest_cache $(TORCH_SPEC)

# The paper notebooks, headless (scripts/run_notebooks.py; see notebooks/README.md). Full budget by default, which
# needs a CUDA GPU: `make reproduce ARGS="--smoke"` for the CPU smoke run, ARGS="table7 -p EPOCHS=100" for a subset.
.PHONY: reproduce
reproduce: install
	$(BIN)/python scripts/run_notebooks.py $(ARGS)
