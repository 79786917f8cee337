"""`python -m densedpo_jax.decode`: see `densedpo_jax/interop/decode_records.py`."""
from densedpo_jax.interop.decode_records import main

if __name__ == "__main__":
  main()
