"""`python -m densedpo_jax.encode`: see `densedpo_jax/interop/encode.py`."""
from densedpo_jax.interop.encode import main

if __name__ == "__main__":
  main()
