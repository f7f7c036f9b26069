# Two entry points for a newcomer: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data demo test gpu-check clean

setup: $(STAMP) data

$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package where we may install it; elsewhere intvit downloads
# it through torchvision, and the tests that need it say why they skip.
data:
	@if [ ! -d $(FASHION_MNIST) ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
		|| echo "note: could not install dataset-fashion-mnist"; fi

demo: setup
	$(BIN)/intvit demo

# Two test processes (pytest-xdist), each on one PyTorch thread: most tests are bound by
# Python, the compilers and TVM's builds, not by PyTorch's kernels.
test: setup
	$(BIN)/python -m pytest -q -n 2 --dist worksteal

# CUDA tests, a torchrun training on the GPU, CPU-vs-CUDA integer logits and a throughput
# table; skips with a message on a machine without CUDA.
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py --json runs/gpu-check.json

clean:
	rm -rf $(VENV) runs .pytest_cache .hypothesis
