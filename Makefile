# Two commands: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and the demo run on CPU. The pinned CPU wheel keeps pip from pulling a multi-GB CUDA build;
# GPU users install the project with their own CUDA torch (`pip install -e .`) instead.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= outputs/demo

.PHONY: demo test test-fast docs install bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m jobs.demo --out $(DEMO_OUT)

test: install
	$(PY) -m pytest -q tests

# The inner loop: unit and core tests and one tiny end-to-end job, on two pytest-xdist workers (each with its
# own tiny models and Ray). `make test` (what CI runs) is everything, the tests marked slow included, in one
# process: the slow lane's timed end-to-end runs (Ctrl-C, node loss, killed drivers) are not run two at a time.
test-fast: install
	$(PY) -m pytest -q -n 2 -m "not slow" tests

# The reference in docs/ as a site (MkDocs, strict: a broken link or a page missing from the nav fails).
docs: install
	$(PY) -m mkdocs build --strict --site-dir site

bench: install
	$(PY) bench/animate.py
	$(PY) bench/ingest.py
	$(PY) bench/evaluate.py
	$(PY) bench/numerics.py
	$(PY) bench/plan.py

clean:
	rm -rf $(VENV) outputs .pytest_cache site
