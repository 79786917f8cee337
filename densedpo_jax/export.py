"""`python -m densedpo_jax.export --workdir=RUN --format=...`: see `densedpo_jax/interop/export.py`."""
from densedpo_jax.interop.export import main

if __name__ == "__main__":
  main()
