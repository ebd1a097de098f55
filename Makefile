# Everyday commands. `make test` and `make demo` work from a fresh clone.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_VERSION ?= 2.13.0

.PHONY: setup test lint typecheck unit demo serve bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch goes first so the project's own torch requirement is already met by the CPU build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==$(TORCH_VERSION)
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

# Browser tests drive Debian's Chromium (never a downloaded browser).
setup: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q

test: lint typecheck unit

# The main job: the embedded service doing a real BDS fine-tune of SmolLM2-135M-Instruct on a
# small dataset with harmful examples, with its safety report (about 15 minutes on 2 cores).
demo: setup
	$(BIN)/python scripts/demo.py

# The quick safety benchmark on SmolLM2-135M-Instruct (about 15 minutes on 2 cores once the data
# is built; the full sweep and the report: docs/benchmarks.md).
bench: setup
	test -f data/bench/eval_everyday_prompts.jsonl || $(BIN)/bds bench build-data --out data/bench --threads 2
	$(BIN)/bds bench run --quick --data data/bench --out runs/bench/quick --threads 2

serve: setup
	$(BIN)/bds serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis test-artifacts
