# Entry points; each runs in the active Python environment (see README).
# `make test` runs the README's test command, `python -m pytest tests -q`.
PYTHON ?= python
export PYTHON

.PHONY: install test test-gpu quickstart

# Idempotent: a rerun only checks (seconds). See tools/install.sh.
install:
	bash tools/install.sh

# pytest's exit code 5 means it collected no tests: reported as a failure,
# because a test suite that silently vanished must not pass.
test: install
	@$(PYTHON) -m pytest tests -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then \
		echo "make test: pytest collected no tests in tests/" >&2; \
	fi; \
	exit $$rc

# The GPU suite (tests/gpu, docs/testing.md), on a machine with a CUDA GPU:
# the tools end to end (NCCL, AMP, kill and resume), every model family,
# parity with the GPU's kernels, checkpoints, ONNX. It installs first, like
# `make test`; where mmcv, mmdet and the plugin are importable already (e.g.
# from a wheelhouse on PYTHONPATH) skip that with `make test-gpu
# GPU_SETUP=`. With pytest-xdist, GPU_WORKERS test files share the GPU side
# by side (0: one process). The differences measured are printed at the end
# and kept in GPU_MEASUREMENTS (JSON lines).
GPU_SETUP ?= install
GPU_WORKERS ?= 4
GPU_MEASUREMENTS ?= work_dirs/gpu_measurements.jsonl
# tests/gpu and the CUDA tests of the CPU suite's files (marked gpu too)
GPU_TESTS = tests
test-gpu: $(GPU_SETUP)
	@$(PYTHON) -c "import sys, torch; torch.cuda.is_available() or \
	sys.exit('make test-gpu: torch sees no CUDA device (docs/testing.md)')"
	@mkdir -p $(dir $(GPU_MEASUREMENTS)) && rm -f $(GPU_MEASUREMENTS)
	@workers=; \
	if [ "$(GPU_WORKERS)" != 0 ] && $(PYTHON) -c 'import xdist' 2>/dev/null; \
	then workers="-n $(GPU_WORKERS) --dist loadfile"; fi; \
	CODETR_GPU_MEASUREMENTS=$(abspath $(GPU_MEASUREMENTS)) \
	$(PYTHON) -m pytest $(GPU_TESTS) -m gpu -v -rs --durations=10 $$workers; \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then \
		echo "make test-gpu: pytest collected no GPU tests" >&2; \
	fi; \
	exit $$rc

# Quickstart: install, then generate the shapes data, train the small
# Co-DETR and print its COCO mAP table (tools/quickstart.sh; ~15 min on 2 CPU
# cores, longer training when a GPU is present).
quickstart: install
	PYTHON=$(PYTHON) bash tools/quickstart.sh
