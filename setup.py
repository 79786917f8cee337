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
    install_requires=[
        "jax>=0.6,<0.13",
        "flax>=0.10,<0.14",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "einops>=0.8",
        "ml-collections>=0.1.1",
        "tensorflow-datasets>=4.9.7",
        "grain>=0.2.10,<0.3",
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
        "tpu": ["jax[tpu]"],
        "cuda": ["jax[cuda12]"],
    },
)
