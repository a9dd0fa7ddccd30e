"""fastnn: Numba-accelerated training of dense networks with batch
normalization and binary cross-entropy, one API for the CPU and the GPU.

    import fastnn as fn
    model = fn.Sequential(fn.Dense(30, 64), fn.BatchNorm(64), fn.ReLU(), fn.Dense(64, 1), seed=0)
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=1e-3), device="auto", seed=0)
    history = trainer.fit(X, y, epochs=20, batch_size=64)
"""

__version__ = "0.1.0"

from . import ops
from .callbacks import CosineDecay, EarlyStopping, StepDecay
from .interop import from_torch
from .io import load, save
from .layers import BatchNorm, Dense, ReLU, Sequential, Sigmoid, Tanh
from .optim import SGD, Adam, AdamW, Optimizer, RMSprop
from .trainer import Trainer

__all__ = ["Sequential", "Dense", "BatchNorm", "ReLU", "Sigmoid", "Tanh", "Trainer", "SGD",
           "RMSprop", "Adam", "AdamW", "Optimizer", "EarlyStopping", "StepDecay", "CosineDecay",
           "save", "load", "from_torch", "ops", "__version__"]
