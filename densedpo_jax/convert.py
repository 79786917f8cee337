"""`python -m densedpo_jax.convert wan SRC DST`: see `densedpo_jax/interop/convert_wan.py`."""
try:
  from densedpo_jax.interop.convert_wan import main
except ModuleNotFoundError as e:  # The [interop] extra is not installed: say so in one line.
  from densedpo_jax.interop import missing_extra
  raise SystemExit(missing_extra(e, "python -m densedpo_jax.convert")) from None

if __name__ == "__main__":
  main()
