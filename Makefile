# prefkit: `make demo` runs the main job on the embedded default, `make test` the whole suite.
# Both create .venv if missing: the pinned CPU torch first, then the project.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
TORCH   ?= torch==2.13.0
STAMP   := .venv/.prefkit-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m prefkit.cli demo step-dpo

test: $(STAMP)
	$(PY) -m pytest -n 2 tests

bench: $(STAMP)
	$(PIP) install -q -e ".[dev,bench]"
	$(PY) benchmarks/throughput.py --mode cpu

clean:
	rm -rf runs .pytest_cache
