# cfhdask — the two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-slurm lint bench venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m cfhdask.warmup
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cfhdask demo --out demo_output

test: $(STAMP)
	$(VENV)/bin/ruff check cfhdask tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# A single-node SLURM on localhost (root; Debian slurm-wlm + munge, installed if missing),
# its files in a temporary folder, stopped by the PIDs in its pid files when the tests end.
test-slurm: $(STAMP)
	@dir=$$(mktemp -d /tmp/cfhdask-slurm.XXXXXX); start=$$(date +%s); \
	trap '$(PY) deploy/slurm/local_slurm.py stop --dir '"$$dir"'; rm -rf '"$$dir" EXIT; \
	$(PY) deploy/slurm/local_slurm.py start --dir "$$dir" || exit 1; \
	SLURM_CONF="$$dir/slurm.conf" $(PY) -m pytest -q -m slurm tests/cluster; rc=$$?; \
	echo "make test-slurm: $$(( $$(date +%s) - start )) s (SLURM start included)"; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check cfhdask tests benchmarks
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) benchmarks/bench_cfh.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
