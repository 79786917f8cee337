"""`python -m densedpo_jax.export --workdir=RUN --format=...`: see
`densedpo_jax/interop/export_diffusers.py`."""
try:
  from densedpo_jax.interop.export_diffusers import main
except ModuleNotFoundError as e:  # The [interop] extra is not installed: say so in one line.
  from densedpo_jax.interop import missing_extra
  raise SystemExit(missing_extra(e, "python -m densedpo_jax.export")) from None

if __name__ == "__main__":
  main()
