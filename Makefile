# Two commands: `make mtbench` (the speedup table) and `make test`. Each sets up .venv itself.
PY := .venv/bin/python
MTBENCH_ARGS ?=

.PHONY: env test mtbench mtbench-full
env:
	@bash scripts/setup_env.sh

test: env
	$(PY) -m pytest tests -q

mtbench: env
	$(PY) scripts/mtbench_speedup.py $(MTBENCH_ARGS)

mtbench-full: env
	$(PY) scripts/mtbench_speedup.py --questions 80 $(MTBENCH_ARGS)
