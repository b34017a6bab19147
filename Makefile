# Entry points; each runs in the active Python environment (see README).
# `make test` runs the README's test command, `python -m pytest tests -q`.
PYTHON ?= python
export PYTHON

.PHONY: install test quickstart

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

# Quickstart: install, then generate the shapes data, train the small
# Co-DETR and print its COCO mAP table (tools/quickstart.sh; ~15 min on 2 CPU
# cores, longer training when a GPU is present).
quickstart: install
	PYTHON=$(PYTHON) bash tools/quickstart.sh
