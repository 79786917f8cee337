"""`python -m densedpo_jax.decode`: see `densedpo_jax/interop/decode.py`."""
from densedpo_jax.interop.decode import main

if __name__ == "__main__":
  main()
