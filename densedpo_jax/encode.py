"""`python -m densedpo_jax.encode`: see `densedpo_jax/interop/encode_videos.py`."""
try:
  from densedpo_jax.interop.encode_videos import main
except ModuleNotFoundError as e:  # The [interop] extra is not installed: say so in one line.
  from densedpo_jax.interop import missing_extra
  raise SystemExit(missing_extra(e, "python -m densedpo_jax.encode")) from None

if __name__ == "__main__":
  main()
