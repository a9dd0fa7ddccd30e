"""Where a training step of the cpu engine spends its time, part by part.

    python bench/profile_step.py [--network tiny] [--optimizer sgd] [--rounds 200]

Builds a ``fastnn bench`` network in float32, starts a fit session on it and
times each part of one step (the batch gather, every layer's forward and
backward, the loss, the optimizer update) by calling the engine's own layer
functions in a compiled loop, so that no Python call is timed. Each round
lasts about half a millisecond, shorter than a time slice of the scheduler:
the minimum over many rounds is the time of a part when nothing else ran on
its core, the figure least disturbed by other processes on a shared machine
(an epoch-long measurement on a loaded machine is not). Prints microseconds
per call; the parts add up to about the whole step (train_step and the
update), printed next; last, the engine's step: one epoch of train_epoch over
four batches, per batch, which adds the divergence guard and the loop.
"""

import argparse
import os
import sys
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from networks import NETWORKS, build_model, make_data  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.kernels import network as engine  # noqa: E402
from fastnn.kernels.loss import LOSS_CODES, loss_and_gradient  # noqa: E402
from fastnn.kernels.optim import optimizer_update  # noqa: E402

GATHER, FORWARD, LOSS, BACKWARD, UPDATE, STEP, EPOCH = range(7)


@njit
def repeat_part(net, ws, grads, opt, X, Y, index, loss, guard, part, l, n, reps):
    """Run one part of a step ``reps`` times (l: the layer, for FORWARD and BACKWARD).
    The update writes the guard's half of the parameters, as the engine's does;
    EPOCH runs ``reps`` engine epochs over all of X."""
    t = net.table
    n_params = net.params.shape[0]
    if part == EPOCH:
        losses, sizes = np.zeros(index.shape[0]), np.zeros(index.shape[0], np.int64)
        for _ in range(reps):
            engine.train_epoch(net, ws, grads, opt, X, Y, index, n, True, losses, sizes, loss,
                               guard, None)
        return
    for _ in range(reps):
        if part == GATHER:
            first_input, _ = engine.layer_blocks(net, ws, 0, n)
            engine.gather_batch(X, Y, index, 0, n, first_input, ws.targets)
        elif part == FORWARD:
            if t[l].kind == engine.DENSE:
                engine.dense_layer_forward(net, ws, l, n)
            elif t[l].kind == engine.BATCHNORM:
                engine.batchnorm_layer_forward(net, ws, l, n, n, engine.TRAINING, None)
            else:
                engine.activation_layer_forward(net, ws, l, n)
        elif part == LOSS:
            loss_and_gradient(loss, engine.network_output(net, ws, n),
                              ws.targets[:n], engine.gradient(ws, 0, n, Y.shape[1]))
        elif part == BACKWARD:
            # the walk's ping-pong buffers as the backward pass sees them at layer l
            current = 0
            for later in range(l + 1, t.shape[0]):
                if not t[later].folded:
                    current = 1 - current
            dy = engine.gradient(ws, current, n, t[l].n_out)
            dx = engine.gradient(ws, 1 - current, n if l > 0 else 0, t[l].n_in)
            if t[l].kind == engine.DENSE:
                engine.dense_layer_backward(net, ws, grads, l, n, dy, dx)
            elif t[l].kind == engine.BATCHNORM:
                engine.batchnorm_layer_backward(net, ws, grads, l, n, n, dy, dx, None)
            else:
                engine.activation_layer_backward(net, ws, l, n, dy, dx)
        elif part == UPDATE:
            optimizer_update(opt, net.params, grads[:n_params], guard.params)
        else:
            engine.train_step(net, ws, grads, X, Y, index, 0, n, loss, None)
            optimizer_update(opt, net.params, grads[:n_params], guard.params)


def microseconds(session, part, l, n, rounds, round_seconds=5e-4):
    s = session
    args = (s.net, s.ws, s.grads, s.opt, s.X, s.Y, s.index, s.loss, s.guard, np.int64(part),
            np.int64(l), np.int64(n))
    repeat_part(*args, np.int64(1))
    start = time.perf_counter()
    repeat_part(*args, np.int64(100))
    reps = max(1, int(round_seconds / ((time.perf_counter() - start) / 100)))
    best = np.inf
    for _ in range(rounds):
        start = time.perf_counter()
        repeat_part(*args, np.int64(reps))
        best = min(best, (time.perf_counter() - start) / reps)
    return best * 1e6


def profile(network, optimizer, rounds):
    """[(part, microseconds)] for one step of ``network``."""
    batch = NETWORKS[network][3]
    X, y = make_data(network, 4 * batch)
    opt = fn.SGD(lr=1e-3) if optimizer == "sgd" else fn.Adam(lr=1e-3)
    trainer = fn.Trainer(build_model(network), optimizer=opt, device="cpu", dtype="float32")
    trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False)  # compile
    session = trainer.backend.start_fit(trainer.model, opt, X, y[:, None].copy(), batch,
                                        LOSS_CODES["bce"])
    session.index = np.arange(X.shape[0])
    table = trainer.model.table
    names = {engine.DENSE: "dense", engine.BATCHNORM: "batchnorm", engine.ACTIVATION: "activation"}
    rows = [("gather", GATHER, 0)]
    for l in range(table.shape[0]):
        if not table[l].folded:
            rows.append((f"forward {l} {names[table[l].kind]} {table[l].n_in}->{table[l].n_out}"
                         + (" +relu" if table[l].relu_after else ""), FORWARD, l))
    rows.append(("loss", LOSS, 0))
    for l in range(table.shape[0] - 1, -1, -1):
        if not table[l].folded:
            rows.append((f"backward {l} {names[table[l].kind]} {table[l].n_in}->{table[l].n_out}"
                         + (" +relu" if table[l].relu_after else ""), BACKWARD, l))
    rows.append((f"update ({optimizer}, {trainer.model.n_params} parameters)", UPDATE, 0))
    timed = [(name, microseconds(session, part, l, batch, rounds)) for name, part, l in rows]
    step = microseconds(session, STEP, 0, batch, rounds)
    epoch = microseconds(session, EPOCH, 0, batch, rounds) * batch / X.shape[0]
    return timed, step, epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="tiny", choices=sorted(NETWORKS))
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    timed, step, epoch = profile(args.network, args.optimizer, args.rounds)
    print(f"{args.network}, {args.optimizer}, float32, batch {NETWORKS[args.network][3]}: "
          f"microseconds per call (min of {args.rounds} rounds)")
    for name, us in timed:
        print(f"  {name:<44} {us:8.3f}")
    print(f"  {'sum of the parts':<44} {sum(us for _, us in timed):8.3f}")
    print(f"  {'whole step (train_step + update)':<44} {step:8.3f}")
    print(f"  {'engine step (train_epoch, per batch)':<44} {epoch:8.3f}")


if __name__ == "__main__":
    main()
