"""The networks the training benchmarks use, built for fastnn and for
PyTorch from one description."""

import numpy as np

import fastnn as fn

# name: (d_in, hidden, blocks, batch); each block is Dense -> BatchNorm -> ReLU,
# followed by a Dense(hidden, 1) head and BCE with logits.
NETWORKS = {
    "issue2": (32, 64, 2, 64),
    "tiny": (16, 32, 2, 32),
    "small": (32, 64, 2, 64),
    "medium": (256, 256, 3, 256),
    "large": (1024, 1024, 3, 1024),
}


def fastnn_model(name, seed=0):
    d_in, hidden, blocks, _ = NETWORKS[name]
    layers, width = [], d_in
    for _ in range(blocks):
        layers += [fn.Dense(width, hidden), fn.BatchNorm(hidden), fn.ReLU()]
        width = hidden
    return fn.Sequential(*layers, fn.Dense(width, 1), seed=seed)


def torch_model(model):
    """The equivalent torch.nn.Sequential, holding a copy of model's weights."""
    import torch
    modules = []
    for layer in model.layers:
        if isinstance(layer, fn.Dense):
            modules.append(torch.nn.Linear(layer.in_features, layer.out_features,
                                           bias=layer.use_bias))
        elif isinstance(layer, fn.BatchNorm):
            modules.append(torch.nn.BatchNorm1d(layer.num_features, eps=layer.eps,
                                                momentum=layer.momentum))
        else:
            modules.append({"ReLU": torch.nn.ReLU, "Sigmoid": torch.nn.Sigmoid,
                            "Tanh": torch.nn.Tanh}[type(layer).__name__]())
    tmodel = torch.nn.Sequential(*modules)
    tmodel.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()})
    return tmodel.to(getattr(torch, np.dtype(model.dtype).name))


def make_data(name, n_samples, seed=0):
    d_in = NETWORKS[name][0]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, d_in)).astype(np.float32)
    y = (X[:, 0] * X[:, 1] > 0).astype(np.float32)
    return X, y


def torch_epoch(tmodel, optimizer, X, y, batch_size):
    """One epoch of eager PyTorch training, batches in order."""
    import torch
    loss_fn = torch.nn.BCEWithLogitsLoss()
    tmodel.train()
    for start in range(0, X.shape[0], batch_size):
        xb, yb = X[start:start + batch_size], y[start:start + batch_size]
        if xb.shape[0] < 2:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(tmodel(xb)[:, 0], yb)
        loss.backward()
        optimizer.step()
