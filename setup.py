"""densedpo_jax: DenseDPO preference optimisation for text-to-video diffusion, in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="densedpo_jax",
    version="0.1.0",
    description="DenseDPO (dense, segment-level DPO for video diffusion) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["densedpo_jax", "densedpo_jax.*"]),
    package_data={"densedpo_jax.annotate": ["static/*"]},
    install_requires=[
        "jax>=0.6,<0.13",
        "flax>=0.10,<0.14",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "einops>=0.8",
        "ml-collections>=0.1.1",
        "tensorflow-datasets>=4.9.7",
        "grain>=0.2.10,<0.3",
        # Paths of workdirs and outputs, local or gs:// (distributed.py); orbax pulls it in too.
        "etils[epath]>=1.5,<2",
        "array-record>=0.7",
        "clu>=0.0.12",
        # clu.metric_writers imports tensorflow and tensorboard.
        "tensorflow-cpu>=2.18",
        "tensorboard>=2.18",
        "numpy>=1.26",
        # GIF/PNG previews of samples (already pulled in by tensorboard; imported directly).
        "pillow>=10",
    ],
    extras_require={
        "test": ["pytest>=8"],
        # Everything PyTorch or FFmpeg (densedpo_jax/interop/: weight conversion, adapter export,
        # video encoding with the Wan VAE and umT5, decoding to MP4 with PyAV); training
        # never imports it. Install torch first with a pin that takes the wheel you want
        # (`pip install torch==2.13.0` here: the CPU build), or pip pulls a CUDA build.
        "interop": ["torch>=2.4", "diffusers>=0.35", "transformers>=4.50", "safetensors>=0.4.3",
                    "peft>=0.15", "av>=12", "sentencepiece>=0.2", "tokenizers>=0.19"],
        "encode": ["densedpo_jax[interop]"],  # The name the data-bridge docs use.
        # The VLM labeler's client: retries with backoff, timeouts and async for free.
        "vlm": ["openai>=1.40"],
        # Browser test of the annotation page: drives Debian's chromium (never downloads one).
        "browser": ["playwright>=1.40"],
        # Optical flow and video decoding for video_metrics (motion, VBench's dynamic degree,
        # temporal consistency): OpenCV's DIS flow needs no weights; FFmpeg comes in the wheel.
        "metrics": ["opencv-python-headless>=4.9,<6"],
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
)
