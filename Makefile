# Every target bootstraps its own virtual environment from nothing but python3.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

## demo: classify the sample reviews with the offline fake model, end to end
demo: $(STAMP)
	$(BIN)/llmbatch run samples/reviews.jsonl -o demo-output.jsonl --provider fake \
		--template samples/review_prompt.txt --id-field id --schema samples/review.schema.json --fresh
	$(BIN)/llmbatch report demo-output.jsonl --html demo-report.html
	@echo "results: demo-output.jsonl; charts: demo-report.html (open it in a browser)"

lint: $(STAMP)
	$(BIN)/ruff check llmbatch tests bench samples
	$(BIN)/ruff format --check llmbatch tests bench samples
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

## test: lint, then the whole test suite (loopback HTTP included)
test: lint
	$(BIN)/python -m pytest

## bench: throughput, latency, rate-limit and memory benchmarks (minutes, not seconds)
bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) demo-output.jsonl demo-output.jsonl.rejects.jsonl demo-report.html
