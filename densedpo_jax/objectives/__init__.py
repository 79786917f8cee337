"""Objectives: the rectified flow (noising, timesteps, Euler sampling, guided pairs), the
flow-matching and DPO losses, the DPO batch's policy and reference errors, and the jitted video
sampler. Pure functions of arrays and a model; nothing here trains, reads data or writes files."""
