"""llama.cpp's CMake flags for the CPU in use, read from its /proc/cpuinfo flags (scripts/setup_llamacpp.sh prints
them with `python3 scripts/llamacpp_flags.py`; stdlib only, it runs before any environment exists).

GGML_NATIVE stays off and the instruction sets are named one by one: on an Intel Xeon with AMX the native build
(which turns the GGML_AMX_* paths on) segfaults in chat completion and decodes the embedded SmolLM2 at 0.6 tok/s,
while native off, AVX-512 on and AMX off runs it at 76 tok/s. AVX-512 (and its VBMI / VNNI / BF16 extensions) is
on where the CPU has it, plain AVX2 where that is all it has; AMX is always off.
"""
from __future__ import annotations

import sys
from pathlib import Path

AVX512_BASE = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")  # what ggml's GGML_AVX512 compiles for
AVX512_EXTRAS = {"GGML_AVX512_VBMI": "avx512vbmi", "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_BF16": "avx512_bf16"}
BASE = {"GGML_SSE42": "sse4_2", "GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c",
        "GGML_BMI2": "bmi2"}
AMX = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")


def cpu_flags(cpuinfo: str) -> set[str]:
    """The instruction-set flags of the first processor in a /proc/cpuinfo text (empty if it lists none)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def cmake_args(flags: set[str]) -> list[str]:
    """-D options for llama.cpp's CMake build on a CPU with these flags: native off, each instruction set on or off
    by what the CPU has, AVX-512 only with all five of its base subsets, AMX off."""
    on = {name: need in flags for name, need in BASE.items()}
    on["GGML_AVX512"] = all(f in flags for f in AVX512_BASE)
    on.update({name: on["GGML_AVX512"] and need in flags for name, need in AVX512_EXTRAS.items()})
    on.update(dict.fromkeys(AMX, False))
    return ["-DGGML_NATIVE=OFF"] + [f"-D{name}={'ON' if v else 'OFF'}" for name, v in on.items()]


def main(argv: list[str]) -> None:
    """Print the CMake arguments for the CPU described by argv[0] (default /proc/cpuinfo), space separated."""
    text = Path(argv[0] if argv else "/proc/cpuinfo").read_text()
    flags = cpu_flags(text)
    if not flags:
        sys.exit(f"no 'flags' line in {argv[0] if argv else '/proc/cpuinfo'}: cannot choose llama.cpp's build flags")
    print(" ".join(cmake_args(flags)))


if __name__ == "__main__":
    main(sys.argv[1:])
