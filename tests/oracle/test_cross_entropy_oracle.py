"""PyTorch oracle for loss="cross_entropy": several steps of each optimizer
through state_dict, compared with torch.nn.CrossEntropyLoss training."""

import numpy as np
import pytest

import fastnn as fn

torch = pytest.importorskip("torch")

OPTIMIZERS = {
    "sgd-momentum": (lambda: fn.SGD(lr=0.1, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, foreach=False)),
    "rmsprop": (lambda: fn.RMSprop(lr=0.01),
                lambda p: torch.optim.RMSprop(p, lr=0.01, foreach=False)),
    "adam": (lambda: fn.Adam(lr=0.01, weight_decay=1e-3),
             lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3, foreach=False)),
}


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-9), ("float32", 1e-4)])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_cross_entropy_training_matches_torch(name, dtype, rtol):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(37, 6)).astype(dtype)
    labels = rng.integers(0, 4, 37)
    model = fn.Sequential(fn.Dense(6, 9, bias=False), fn.BatchNorm(9), fn.Tanh(), fn.Dense(9, 4),
                          seed=0)
    model.astype(dtype)
    tmodel = model.to_torch()
    ours, theirs = OPTIMIZERS[name]
    topt = theirs(tmodel.parameters())
    losses = []
    for _ in range(2):
        for start in range(0, 37, 8):
            xb = torch.from_numpy(X[start:start + 8])
            yb = torch.from_numpy(labels[start:start + 8])
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tmodel(xb), yb)
            loss.backward()
            topt.step()
            losses.append((loss.item(), len(yb)))
    trainer = fn.Trainer(model, optimizer=ours(), loss="cross_entropy", device="cpu", dtype=dtype)
    history = trainer.fit(X, labels, epochs=2, batch_size=8, shuffle=False)
    per_epoch = [losses[:5], losses[5:]]
    expected = [sum(v * n for v, n in e) / 37 for e in per_epoch]
    np.testing.assert_allclose(history["loss"], expected, rtol=rtol)
    for key, value in tmodel.state_dict().items():
        np.testing.assert_allclose(model.state_dict()[key], value.numpy(), rtol=rtol,
                                   atol=rtol * 0.1, err_msg=key)
    tmodel.eval()
    p = torch.softmax(tmodel(torch.from_numpy(X)), dim=1).detach().numpy()
    np.testing.assert_allclose(trainer.predict_proba(X), p, rtol=rtol, atol=rtol * 0.1)
