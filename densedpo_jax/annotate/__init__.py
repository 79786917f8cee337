"""A local web page for people to label pairs segment by segment (`python -m densedpo_jax.annotate`)."""
