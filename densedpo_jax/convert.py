"""`python -m densedpo_jax.convert wan SRC DST`: see `densedpo_jax/interop/convert.py`."""
from densedpo_jax.interop.convert import main

if __name__ == "__main__":
  main()
