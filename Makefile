# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean fixtures

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Index the shipped catalog, scan the shipped crawl (attacked copies, unrelated images, a
# broken download, a flat image), print a table and write JSON Lines to demo-out/.
demo: $(STAMP)
	rm -rf demo-out && mkdir -p demo-out
	$(VENV)/bin/copyscan --db demo-out/demo.db catalog add fixtures/catalog --owner "Demo Rights Ltd"
	$(VENV)/bin/copyscan --db demo-out/demo.db scan fixtures/crawl --mode thorough --jsonl demo-out/scan.jsonl
	@echo "JSON Lines written to demo-out/scan.jsonl"

test: $(STAMP)
	$(VENV)/bin/ruff check detector cli tests benchmarks
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

fixtures: $(STAMP)
	$(PY) fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache .mypy_cache
