# Commands: `make mtbench` (the speedup table), `make test` and `make lint`. Each sets up .venv itself.
PY := .venv/bin/python
MTBENCH_ARGS ?=

.PHONY: env lint test mtbench mtbench-full
env:
	@bash scripts/setup_env.sh

lint: env
	$(PY) -m ruff check .

test: env
	$(PY) -m pytest tests -q

mtbench: env
	$(PY) scripts/mtbench_speedup.py $(MTBENCH_ARGS)

mtbench-full: env
	$(PY) scripts/mtbench_speedup.py --questions 80 $(MTBENCH_ARGS)
