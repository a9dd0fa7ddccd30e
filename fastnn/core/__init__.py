"""The library proper: layers, optimizers, the Trainer, the backends,
checkpoints and model files. Its public names are exported by ``fastnn``."""
