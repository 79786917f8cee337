"""Training: the train loop (`train.py`), the jitted step and its state (`train_step.py`),
Orbax run checkpoints, meshes and sharding rules, the config-to-model builders, and host memory
settings for CPU steps. Imports the model, objectives and data; nothing here knows the tasks."""
