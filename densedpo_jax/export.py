"""`python -m densedpo_jax.export --workdir=RUN --format=...`: see
`densedpo_jax/interop/export_diffusers.py`."""
from densedpo_jax.interop.export_diffusers import main

if __name__ == "__main__":
  main()
