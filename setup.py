from setuptools import setup

# kernels/ is shipped as specdec.kernels: a top-level `kernels` module would shadow the Hugging Face
# package of that name, which transformers and bitsandbytes probe.
setup(
    name="specdec",
    version="0.1.0",
    description="Lossless speculative decoding for Llama-family chat models: one loop, pluggable drafters.",
    python_requires=">=3.10",
    packages=["specdec", "specdec.drafters", "specdec.kernels"],
    package_dir={"specdec": "specdec", "specdec.kernels": "kernels"},
    package_data={"specdec": ["weights/*/*/*"]},  # shipped draft heads
    install_requires=[
        "torch>=2.5",
        "transformers>=4.56",
        "safetensors",
        "gguf",
        "tqdm",
        "fschat",
    ],
)
