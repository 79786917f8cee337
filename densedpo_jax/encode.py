"""`python -m densedpo_jax.encode`: see `densedpo_jax/interop/encode_videos.py`."""
from densedpo_jax.interop.encode_videos import main

if __name__ == "__main__":
  main()
