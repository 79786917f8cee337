"""`python -m densedpo_jax.convert wan SRC DST`: see `densedpo_jax/interop/convert_wan.py`."""
from densedpo_jax.interop.convert_wan import main

if __name__ == "__main__":
  main()
