"""densedpo_jax: DenseDPO for latent text-to-video diffusion transformers, in JAX/Flax."""

__version__ = "0.1.0"
