"""Framework-neutral helpers shared by the pretraining examples: offline data, CP batch sharding,
progress display, loss curves and checkpoints. Each submodule imports only torch (and optional extras)."""
