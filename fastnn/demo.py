"""``python -m fastnn demo``: train on data fastnn makes itself."""

import numpy as np


def make_data(n_samples, n_features=30, seed=0):
    """A non-linearly separable binary problem: the label is 1 inside a
    shell of two informative features (radius between 0.8 and 1.6), with
    ``n_features - 2`` noise features; about half the samples are positive.

    Returns X (n_samples, n_features) float64 and y (n_samples,) in {0, 1}.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_samples, n_features))
    radius = np.hypot(X[:, 0], X[:, 1])
    y = ((radius > 0.8) & (radius < 1.6)).astype(np.float64)
    return X, y


def run(samples=20000, epochs=10, batch_size=64, device="auto", dtype="float32", seed=0,
        out=print):
    import fastnn as fn

    X, y = make_data(samples + samples // 4, seed=seed)
    Xt, yt, Xv, yv = X[:samples], y[:samples], X[samples:], y[samples:]
    model = fn.mlp(30, [64, 64], 1, seed=seed)  # Dense BatchNorm ReLU, twice, and a Dense head
    trainer = fn.Trainer(model, optimizer=fn.Adam(lr=1e-3), device=device, dtype=dtype, seed=seed)
    # fit would compile too, untimed; with device='auto', on the device predicted faster for
    # this fit (fastnn.core.device)
    seconds = trainer.precompile(Xt, yt, validation_data=(Xv, yv), batch_size=batch_size,
                                 epochs=epochs)
    out(f"fastnn {fn.__version__} demo: {samples} training samples, 30 features, "
        f"device {trainer.backend.describe()}, {dtype}")
    out(repr(model))
    out(f"kernels compiled (or loaded from numba's cache) in {seconds:.2f} s")
    history = trainer.fit(Xt, yt, epochs=epochs, batch_size=batch_size,
                          validation_data=(Xv, yv))
    for e in range(epochs):
        out(f"epoch {e + 1:3d}  loss {history['loss'][e]:.4f}  "
            f"val_loss {history['val_loss'][e]:.4f}  val_accuracy {history['val_accuracy'][e]:.4f}  "
            f"{samples / history['time'][e]:,.0f} samples/s")
    scores = trainer.evaluate(Xv, yv)
    out(f"final: val_loss {scores['loss']:.4f}, val_accuracy {scores['accuracy']:.4f}, "
        f"device {trainer.device}, {samples * epochs / sum(history['time']):,.0f} samples/s")
    return history, scores
