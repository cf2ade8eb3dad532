# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean fixtures browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Index the shipped catalog, scan the shipped crawl (attacked copies, unrelated images, a
# broken download, a flat image), print a table, write JSON Lines and the infringement report
# (HTML folder and CSV) to demo-out/.
demo: $(STAMP)
	rm -rf demo-out && mkdir -p demo-out
	$(VENV)/bin/copyscan --db demo-out/demo.db catalog add fixtures/catalog --owner "Demo Rights Ltd"
	@# exit status 4: the scan completed, and the crawl's two bad files were reported as unusable
	$(VENV)/bin/copyscan --db demo-out/demo.db scan fixtures/crawl --mode thorough --jsonl demo-out/scan.jsonl \
	  || [ $$? -eq 4 ]
	$(VENV)/bin/copyscan --db demo-out/demo.db report --html demo-out/report --csv demo-out/report.csv
	@echo "Report: demo-out/report/index.html (open it in a browser); demo-out/report.csv; JSON Lines: demo-out/scan.jsonl"

# Headless Chromium for the browser tests (tests/browser.py), installed from Debian when
# missing; never fails: without a browser those tests are skipped with a message.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || command -v google-chrome >/dev/null 2>&1 \
	  || { SUDO=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	       $$SUDO apt-get update && \
	       $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; } \
	  || echo "could not install chromium: the browser tests will be skipped"

test: $(STAMP) browser
	$(VENV)/bin/ruff check detector cli tests benchmarks fuzz
	$(VENV)/bin/mypy
	$(PY) -m pytest -q

fixtures: $(STAMP)
	$(PY) fixtures/make_fixtures.py

clean:
	rm -rf $(VENV) demo-out test-artifacts .pytest_cache .ruff_cache .mypy_cache
