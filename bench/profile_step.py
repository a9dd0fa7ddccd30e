"""Where a training step of the cpu engine spends its time, part by part, and
what a change costs a whole step.

    python bench/profile_step.py [--network tiny] [--optimizer sgd] [--rounds 200]
                                 [--activation relu] [--dropout P] [--dtype float32]
                                 [--against DIR]

Builds a ``fastnn bench`` network in float32 (or ``--dtype``; with
``--activation``, another hidden activation than ReLU, which BatchNorm
applies itself; with ``--dropout P``, a Dropout(P) after each one), starts a fit session on it and
times each part of one step (the batch gather, every layer's forward and
backward, the loss, the optimizer update) by calling the engine's own layer
functions in a compiled loop, so that no Python call is timed. Each round
lasts about half a millisecond, shorter than a time slice of the scheduler:
the minimum over many rounds is the time of a part when nothing else ran on
its core, the figure least disturbed by other processes on a shared machine
(an epoch-long measurement on a loaded machine is not). Prints microseconds
per call; the parts add up to about the whole step (train_step and the
update), printed next; then the engine's step: one epoch of train_epoch over
four batches, per batch, which adds the divergence guard and the loop. A
Dropout layer's backward pass multiplies by the mask its forward pass kept;
the row "mask drawn again" times what drawing it again instead would cost.

``--against DIR`` then times whole steps of this engine without Dropout, of
the engine in DIR/kernels (another checkout's, imported under another name:
``mkdir /tmp/base && git archive main kernels | tar -x -C /tmp/base``; a
directory of its own, as numba's cache there will hold that name) on the
same network, and of this engine with Dropout(P) after each hidden
activation (P from ``--dropout``, default 0.1), interleaved round by round in
this one process. A step's time is the difference between ``train_epoch``
calls over 40 and over 8 batches, each the minimum over the rounds, divided
by 32: what a call costs besides its steps (typing the arguments, which
takes longer for the second of two engines with same-named tuples) cancels.
"""

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
from numba import njit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from networks import NETWORKS, make_data  # noqa: E402

import fastnn as fn  # noqa: E402
from fastnn.kernels import network as engine  # noqa: E402
from fastnn.kernels.dropout import dropout_forward  # noqa: E402
from fastnn.kernels.loss import BCE, engine_loss, loss_and_gradient  # noqa: E402
from fastnn.kernels.optim import optimizer_update  # noqa: E402

GATHER, FORWARD, LOSS, BACKWARD, UPDATE, STEP, REDRAW, EPOCH = range(8)
NAMES = {engine.DENSE: "dense", engine.BATCHNORM: "batchnorm", engine.ACTIVATION: "activation",
         engine.DROPOUT: "dropout"}


@njit
def repeat_part(net, ws, grads, opt, X, Y, index, loss, guard, part, l, n, reps):
    """Run one part of a step ``reps`` times (l: the layer, for FORWARD,
    BACKWARD and REDRAW). The update writes the guard's half of the
    parameters, as the engine's does; EPOCH runs ``reps`` engine epochs over
    all of X."""
    t = net.table
    n_params = net.params.shape[0]
    unweighted = np.zeros(0)  # the engine's sample weights of an unweighted fit
    if part == EPOCH:
        losses, sizes = np.zeros(index.shape[0]), np.zeros(index.shape[0], np.int64)
        for _ in range(reps):
            engine.train_epoch(net, ws, grads, opt, X, Y, unweighted, index, n, True, losses,
                               sizes, loss, guard, None)
        return
    for _ in range(reps):
        if part == GATHER:
            first_input, _ = engine.layer_blocks(net, ws, 0, n)
            engine.gather_batch(X, Y, unweighted, index, 0, n, first_input, ws.targets,
                                ws.weights)
        elif part == FORWARD:
            if t[l].kind == engine.DENSE:
                engine.dense_layer_forward(net, ws, l, n)
            elif t[l].kind == engine.BATCHNORM:
                engine.batchnorm_layer_forward(net, ws, l, n, n, engine.TRAINING, None)
            elif t[l].kind == engine.DROPOUT:
                engine.dropout_layer_forward(net, ws, l, n, engine.TRAINING)
            else:
                engine.activation_layer_forward(net, ws, l, n)
        elif part == LOSS:
            loss_and_gradient(loss, engine.network_output(net, ws, n), ws.targets[:n],
                              unweighted, float(n), engine.gradient(ws, 0, n, Y.shape[1]))
        elif part == BACKWARD or part == REDRAW:
            # the walk's ping-pong buffers as the backward pass sees them at layer l
            current = 0
            for later in range(l + 1, t.shape[0]):
                if not t[later].folded:
                    current = 1 - current
            dy = engine.gradient(ws, current, n, t[l].n_out)
            dx = engine.gradient(ws, 1 - current, n if l > 0 else 0, t[l].n_in)
            if part == REDRAW:  # the mask drawn again from the step's stream, times dy
                dropout_forward(dy, ws.dropout[engine.DROPOUT_KEY],
                                ws.dropout[engine.DROPOUT_STEP], l,
                                ws.dropout[engine.DROPOUT_ROW], t[l].p, dx,
                                engine.dropout_mask(net, ws, l, n), ws.sums)
            elif t[l].kind == engine.DENSE:
                engine.dense_layer_backward(net, ws, grads, l, n, dy, dx)
            elif t[l].kind == engine.BATCHNORM:
                engine.batchnorm_layer_backward(net, ws, grads, l, n, n, dy, dx, None)
            elif t[l].kind == engine.DROPOUT:
                engine.dropout_layer_backward(net, ws, l, n, dy, dx)
            else:
                engine.activation_layer_backward(net, ws, l, n, dy, dx)
        elif part == UPDATE:
            optimizer_update(opt, net.params, grads[:n_params], guard.params)
        else:
            engine.train_step(net, ws, grads, X, Y, unweighted, index, 0, n, loss, None)
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


def build_model(network, dropout=0.0, activation="relu", seed=0):
    """The ``fastnn bench`` network, with another activation and Dropout(dropout)
    after each hidden activation."""
    d_in, hidden, blocks, _ = NETWORKS[network]
    return fn.mlp(d_in, [hidden] * blocks, 1, seed=seed, dropout=dropout, activation=activation)


def session_for(network, optimizer, dropout, n_batches, activation="relu", dtype="float32"):
    """A compiled cpu fit session on the network (in dtype), its index over
    n_batches batches in order."""
    batch = NETWORKS[network][3]
    X, y = make_data(network, n_batches * batch)
    X, y = X.astype(dtype), y.astype(dtype)
    opt = fn.SGD(lr=1e-3) if optimizer == "sgd" else fn.Adam(lr=1e-3)
    trainer = fn.Trainer(build_model(network, dropout, activation), optimizer=opt, device="cpu",
                         dtype=dtype, seed=0)
    trainer.fit(X, y, epochs=1, batch_size=batch, shuffle=False)  # compile
    session = trainer.backend.start_fit(trainer.model, opt, X, y[:, None].copy(), batch,
                                        engine_loss(BCE), dropout_key=trainer.dropout_key)
    session.index = np.arange(X.shape[0])
    return trainer, session


def profile(network, optimizer, rounds, dropout, activation="relu", dtype="float32"):
    """[(part, microseconds)] for one step of ``network``."""
    batch = NETWORKS[network][3]
    trainer, session = session_for(network, optimizer, dropout, 4, activation, dtype)
    table = trainer.model.table
    rows = [("gather", GATHER, 0)]
    for l in range(table.shape[0]):
        if not table[l].folded:
            rows.append((f"forward {l} {NAMES[table[l].kind]} {table[l].n_in}->{table[l].n_out}"
                         + (" +relu" if table[l].relu_after else ""), FORWARD, l))
    rows.append(("loss", LOSS, 0))
    for l in range(table.shape[0] - 1, -1, -1):
        if not table[l].folded:
            rows.append((f"backward {l} {NAMES[table[l].kind]} {table[l].n_in}->{table[l].n_out}"
                         + (" +relu" if table[l].relu_after else ""), BACKWARD, l))
    rows.append((f"update ({optimizer}, {trainer.model.n_params} parameters)", UPDATE, 0))
    timed = [(name, microseconds(session, part, l, batch, rounds)) for name, part, l in rows]
    redrawn = [(f"(backward {l} dropout, mask drawn again)",
                microseconds(session, REDRAW, l, batch, rounds))
               for l in range(table.shape[0]) if table[l].kind == engine.DROPOUT]
    step = microseconds(session, STEP, 0, batch, rounds)
    epoch = microseconds(session, EPOCH, 0, batch, rounds) * batch / session.X.shape[0]
    return timed, redrawn, step, epoch


# ---- whole steps against another checkout's engine ----

def load_kernels(directory):
    """DIR/kernels imported as the package ``baseline_kernels``."""
    source = os.path.join(os.path.abspath(directory), "kernels")
    spec = importlib.util.spec_from_file_location(
        "baseline_kernels", os.path.join(source, "__init__.py"),
        submodule_search_locations=[source])
    package = importlib.util.module_from_spec(spec)
    sys.modules["baseline_kernels"] = package
    spec.loader.exec_module(package)
    names = ("network", "optim", "loss")
    return [importlib.import_module(f"baseline_kernels.{name}") for name in names]


def baseline_epoch(directory, trainer, session, batches):
    """A call training ``batches`` batches of session's on DIR's engine, from
    the same weights and data."""
    network, optim, loss = load_kernels(directory)
    model, t = trainer.model, trainer.model.table
    specs = []
    for l in range(t.shape[0]):
        spec = {"kind": int(t.kind[l]), "n_in": int(t.n_in[l]), "n_out": int(t.n_out[l]),
                "bias": bool(t.bias_at[l] >= 0), "activation": int(t.activation[l]),
                "eps": float(t.eps[l]), "sync": bool(t.sync[l]),
                "momentum": None if t.momentum[l] < 0 else float(t.momentum[l])}
        specs.append(spec)
    table = network.build_layer_table(specs)[0]
    net = network.Network(table, model.params.copy(), model.buffers.copy(), model.counts.copy())
    batch = session.ws.targets.shape[0]
    ws = network.workspace(table, batch, 1, model.dtype)
    grads = np.zeros(model.n_params + 1, model.dtype)
    opt = optim.optimizer_state(trainer.optimizer.kind, trainer.optimizer.hyper(),
                                np.zeros(1, np.int64), np.zeros((3, model.n_params), model.dtype))
    guard = network.guard_for(net)
    index = session.index[:batches * batch]
    losses, sizes = np.zeros(batches), np.zeros(batches, np.int64)
    kind = loss.engine_loss(loss.BCE)
    return lambda: network.train_epoch(net, ws, grads, opt, session.X, session.Y, None, index,
                                       batch, True, losses, sizes, kind, guard, None)


def this_epoch(session, batches):
    """A call training ``batches`` batches of session's on this engine."""
    s = session
    batch = s.ws.targets.shape[0]
    index = s.index[:batches * batch]
    losses, sizes = np.zeros(batches), np.zeros(batches, np.int64)
    return lambda: engine.train_epoch(s.net, s.ws, s.grads, s.opt, s.X, s.Y, s.W, index, batch,
                                      True, losses, sizes, s.loss, s.guard, None)


def compare(network, optimizer, rounds, dropout, directory, short=8, long=40, dtype="float32"):
    """{variant: microseconds per step}, interleaved, from the minima over
    the rounds of calls over ``long`` and ``short`` batches."""
    plain_trainer, plain = session_for(network, optimizer, 0.0, long, dtype=dtype)
    _, with_dropout = session_for(network, optimizer, dropout, long, dtype=dtype)
    variants = {
        f"{directory} engine, no dropout": [baseline_epoch(directory, plain_trainer, plain, n)
                                            for n in (short, long)],
        "this engine, no dropout": [this_epoch(plain, n) for n in (short, long)],
        f"this engine, Dropout({dropout}) after each activation": [
            this_epoch(with_dropout, n) for n in (short, long)]}
    best = {name: [np.inf, np.inf] for name in variants}
    for calls in variants.values():
        for call in calls:
            call()  # compile (or load) and warm up
    for _ in range(rounds):
        for name, calls in variants.items():
            for i, call in enumerate(calls):
                start = time.perf_counter()
                call()
                best[name][i] = min(best[name][i], time.perf_counter() - start)
    return {name: (b[1] - b[0]) / (long - short) * 1e6 for name, b in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="tiny", choices=sorted(NETWORKS))
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--activation", default="relu",
                        help="the hidden activation (fastnn.mlp's names; default relu)")
    parser.add_argument("--dropout", type=float, default=None, metavar="P",
                        help="a Dropout(P) after each hidden activation (--against: default 0.1)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--against", metavar="DIR",
                        help="also time whole steps against the engine in DIR/kernels")
    args = parser.parse_args()
    dropout = args.dropout or 0.0
    timed, redrawn, step, epoch = profile(args.network, args.optimizer, args.rounds, dropout,
                                          args.activation, args.dtype)
    print(f"{args.network}, {args.optimizer}, {args.dtype}, batch {NETWORKS[args.network][3]}, "
          f"{args.activation}{f', Dropout({dropout})' if dropout else ''}: microseconds per call "
          f"(min of {args.rounds} rounds)")
    for name, us in timed:
        print(f"  {name:<44} {us:8.3f}")
    print(f"  {'sum of the parts':<44} {sum(us for _, us in timed):8.3f}")
    print(f"  {'whole step (train_step + update)':<44} {step:8.3f}")
    print(f"  {'engine step (train_epoch, per batch)':<44} {epoch:8.3f}")
    for name, us in redrawn:
        print(f"  {name:<44} {us:8.3f}")
    if args.against:
        p = args.dropout if args.dropout is not None else 0.1
        steps = compare(args.network, args.optimizer, args.rounds, p, args.against,
                        dtype=args.dtype)
        base = next(iter(steps.values()))
        print(f"whole steps (train_epoch over 40 batches less over 8, / 32), interleaved, "
              f"min of {args.rounds} rounds: microseconds per step (ratio to the first)")
        for name, us in steps.items():
            print(f"  {name:<56} {us:8.3f}  {us / base:6.3f}")


if __name__ == "__main__":
    main()
