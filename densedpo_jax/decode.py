"""`python -m densedpo_jax.decode`: see `densedpo_jax/interop/decode_records.py`."""
try:
  from densedpo_jax.interop.decode_records import main
except ModuleNotFoundError as e:  # The [interop] extra is not installed: say so in one line.
  from densedpo_jax.interop import missing_extra
  raise SystemExit(missing_extra(e, "python -m densedpo_jax.decode")) from None

if __name__ == "__main__":
  main()
