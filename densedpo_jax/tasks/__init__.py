"""Tasks: the jobs `python -m densedpo_jax.main` runs besides training: pair generation
(`pairs.py`), evaluation (`evaluate.py`) and one preference-optimisation arm end to end
(`arm.py`, task=pipeline). They compose the training, objectives, data and labeling layers."""
