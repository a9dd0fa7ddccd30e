"""JAX's side of ``fastnn bench``: the same network, written out in jax.numpy
from fastnn's weights (Dense -> BatchNorm -> ReLU blocks and a Dense head,
BCE on logits, SGD or Adam as torch.optim computes them), the whole epoch
one jitted ``lax.scan`` over the batches in order."""

import jax
import jax.numpy as jnp


def scan_epoch(model, blocks, optimizer, X, y, batch, lr):
    """The whole epoch as one jitted lax.scan over the batches.

    Parameters
    ----------
    model : fastnn Sequential in float32, ``blocks`` x (Dense, BatchNorm1d,
        ReLU) and a Dense head of one output
    blocks : int
    optimizer : str, "sgd" or "adam"
    X : ndarray (n_samples, d_in), float32
    y : ndarray (n_samples,), float32 labels in {0, 1}
    batch : int, the batch size (n_samples is a multiple of it)
    lr : float, the learning rate

    Returns
    -------
    callable
        ``epoch()``: one epoch, blocking until it is done.
    """
    d_in = X.shape[1]
    state = model.state_dict()
    n_dense = blocks + 1
    params = [(jnp.asarray(state[f"{3 * i}.weight"]), jnp.asarray(state[f"{3 * i}.bias"]))
              for i in range(n_dense)]
    params += [(jnp.asarray(state[f"{3 * i + 1}.weight"]), jnp.asarray(state[f"{3 * i + 1}.bias"]))
               for i in range(blocks)]
    running = [(jnp.asarray(state[f"{3 * i + 1}.running_mean"]),
                jnp.asarray(state[f"{3 * i + 1}.running_var"])) for i in range(blocks)]

    def loss_fn(params, running, xb, yb):
        h, new_running = xb, []
        for i in range(blocks):
            w, b = params[i]
            gamma, beta = params[n_dense + i]
            h = h @ w.T + b
            mean, var = h.mean(0), h.var(0)
            h = jax.nn.relu((h - mean) * jax.lax.rsqrt(var + 1e-5) * gamma + beta)
            rm, rv = running[i]
            new_running.append((0.9 * rm + 0.1 * mean, 0.9 * rv + 0.1 * var * batch / (batch - 1)))
        w, b = params[blocks]
        z = (h @ w.T + b)[:, 0]
        loss = jnp.mean(jnp.maximum(z, 0) - z * yb + jnp.log1p(jnp.exp(-jnp.abs(z))))
        return loss, new_running

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(carry, data):
        params, running, m, v, t = carry
        (loss, running), grads = grad_fn(params, running, *data)
        if optimizer == "sgd":
            params = jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads)
        else:
            t = t + 1
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, grads)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, grads)
            c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - lr * (m / c1) / (jnp.sqrt(v / c2) + 1e-8), params, m, v)
        return (params, running, m, v, t), loss

    @jax.jit
    def run_epoch(carry, xs, ys):
        return jax.lax.scan(step, carry, (xs, ys))

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    carry = [(params, running, zeros, zeros, jnp.float32(0))]
    xs = jnp.asarray(X.reshape(-1, batch, d_in))
    ys = jnp.asarray(y.reshape(-1, batch))

    def epoch():
        carry[0], losses = run_epoch(carry[0], xs, ys)
        losses.block_until_ready()
    return epoch
