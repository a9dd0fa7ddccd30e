"""Optimizer updates of flat parameter buffers.

Contract, shared by every version of the op:
    w, g   : (n,) parameters and their gradients (all of a model's parameters
             live in one flat buffer, so one call updates every tensor)
    out    : (n,) the updated parameters (the cpu update; w itself for an
             update in place)
    state  : an ``OptimizerState``, one type for every optimizer, holding
               kind  : int64, SGD, RMSPROP or ADAM
               hyper : (HYPER_SIZE,) float64, the hyper-parameters at the
                       named slots below (LR, WEIGHT_DECAY, ...), the same
                       layout for every optimizer; the lr may change between
                       epochs (``hyper[LR] = ...``)
               step  : (1,) int64, the number of updates taken so far; an
                       update first increments it
               rows  : (3, n) in w's dtype, the optimizer's buffers, one per
                       row (``STATE_ROWS`` names them; ``state_buffer``
                       reads one by name):
                       SGD      momentum_buffer
                       RMSprop  square_avg, momentum_buffer, grad_avg
                       Adam     exp_avg, exp_avg_sq
                       the Python optimizer's own array, which checkpoints
                       save as it is.
             As every optimizer has the same type, a compiled engine holds
             the three updates and picks one per step at run time: a model
             with another optimizer loads the same compiled engine.
The formulas are PyTorch's single-tensor ones (torch.optim.SGD, RMSprop,
Adam). The hyper-parameter vector is decoded in one place per optimizer
(``sgd_scalars``, ``rmsprop_scalars``, ``adam_scalars``): the derived scalars
are computed in float64 and cast to w's dtype, so float32 updates run in
float32 as PyTorch's do. The scalar functions and the element math
(``elementwise``) are inlined into the cpu kernels below and into the CUDA
kernels alike.
"""

import math
from collections import namedtuple

import numpy as np
from numba import types
from numba.extending import overload

from .elementwise import adam_element, rmsprop_element, sgd_element
from .jit import jit, inline
from .reference import sum_in_order


SGD, RMSPROP, ADAM = 0, 1, 2

# ---- hyper-parameter slots (one layout for every optimizer) ----
LR, WEIGHT_DECAY, MOMENTUM, DAMPENING, NESTEROV, ALPHA, EPS, CENTERED, BETA1, BETA2, \
    DECOUPLED = range(11)
HYPER_SIZE = 11
HYPER_SLOTS = {"lr": LR, "weight_decay": WEIGHT_DECAY, "momentum": MOMENTUM,
               "dampening": DAMPENING, "nesterov": NESTEROV, "alpha": ALPHA, "eps": EPS,
               "centered": CENTERED, "beta1": BETA1, "beta2": BETA2,
               "decoupled_weight_decay": DECOUPLED}


def pack_hyper(**values):
    """The (HYPER_SIZE,) float64 vector with each named value in its slot
    (booleans as 0/1); unnamed slots are 0."""
    hyper = np.zeros(HYPER_SIZE, np.float64)
    for name, value in values.items():
        hyper[HYPER_SLOTS[name]] = float(value)
    return hyper


# ---- the state each optimizer carries ----
OptimizerState = namedtuple("OptimizerState", ["kind", "hyper", "step", "rows"])
#: which row of the optimizer's (3, n) state array each named buffer is
STATE_ROWS = {SGD: ("momentum_buffer",), RMSPROP: ("square_avg", "momentum_buffer", "grad_avg"),
              ADAM: ("exp_avg", "exp_avg_sq")}
SGD_MOMENTUM = STATE_ROWS[SGD].index("momentum_buffer")
RMSPROP_SQUARE_AVG = STATE_ROWS[RMSPROP].index("square_avg")
RMSPROP_MOMENTUM = STATE_ROWS[RMSPROP].index("momentum_buffer")
RMSPROP_GRAD_AVG = STATE_ROWS[RMSPROP].index("grad_avg")
ADAM_EXP_AVG = STATE_ROWS[ADAM].index("exp_avg")
ADAM_EXP_AVG_SQ = STATE_ROWS[ADAM].index("exp_avg_sq")


def optimizer_state(kind, hyper, step, rows):
    """The state of optimizer ``kind`` (SGD, RMSPROP or ADAM) over its
    hyper-parameters, step count and (3, n) buffer array ``rows`` (updates
    land in ``rows``)."""
    if kind not in STATE_ROWS:
        raise ValueError(f"unknown optimizer kind {kind!r}")
    return OptimizerState(np.int64(kind), hyper, step, rows)


def state_buffer(state, name):
    """The (n,) buffer ``name`` (STATE_ROWS) of ``state``: a view of its row."""
    return state.rows[STATE_ROWS[int(state.kind)].index(name)]


# ---- the hyper-parameters, decoded once per optimizer ----
# ``like`` is any array of the parameters' dtype: the scalars come back in it.

@inline
def sgd_scalars(hyper, step, like):
    """(lr, momentum, 1 - dampening, nesterov, weight_decay, first_step)."""
    t = like.dtype.type
    return (t(hyper[LR]), t(hyper[MOMENTUM]), t(1.0 - hyper[DAMPENING]), hyper[NESTEROV] != 0.0,
            t(hyper[WEIGHT_DECAY]), step == 1)


@inline
def rmsprop_scalars(hyper, like):
    """(lr, alpha, 1 - alpha, eps, momentum, weight_decay, centered)."""
    t = like.dtype.type
    return (t(hyper[LR]), t(hyper[ALPHA]), t(1.0 - hyper[ALPHA]), t(hyper[EPS]),
            t(hyper[MOMENTUM]), t(hyper[WEIGHT_DECAY]), hyper[CENTERED] != 0.0)


@inline
def adam_scalars(hyper, step, like):
    """(1 - beta1, beta2, 1 - beta2, eps, weight_decay, 1 - lr * weight_decay,
    decoupled, lr / (1 - beta1^t), sqrt(1 - beta2^t)): the bias corrections
    are computed in float64, then everything is cast to like's dtype."""
    t = like.dtype.type
    lr, beta1, beta2 = hyper[LR], hyper[BETA1], hyper[BETA2]
    step_size = lr / (1.0 - beta1 ** step)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** step)
    return (t(1.0 - beta1), t(beta2), t(1.0 - beta2), t(hyper[EPS]), t(hyper[WEIGHT_DECAY]),
            t(1.0 - lr * hyper[WEIGHT_DECAY]), hyper[DECOUPLED] != 0.0, t(step_size),
            t(bias_correction2_sqrt))


# ---- reference (NumPy, in place, the same formulas written with whole arrays) ----

def sgd_reference(w, g, buf, step, lr, momentum=0.0, dampening=0.0, nesterov=False,
                  weight_decay=0.0):
    d = g + weight_decay * w
    if momentum != 0:
        if step == 1:
            buf[:] = d
        else:
            buf[:] = momentum * buf + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    w -= lr * d


def rmsprop_reference(w, g, square_avg, grad_avg, buf, lr, alpha=0.99, eps=1e-8,
                      momentum=0.0, weight_decay=0.0, centered=False):
    d = g + weight_decay * w
    square_avg[:] = alpha * square_avg + (1 - alpha) * d * d
    if centered:
        grad_avg[:] = grad_avg + (1 - alpha) * (d - grad_avg)
        avg = np.sqrt(square_avg - grad_avg ** 2) + eps
    else:
        avg = np.sqrt(square_avg) + eps
    if momentum > 0:
        buf[:] = momentum * buf + d / avg
        w -= lr * buf
    else:
        w -= lr * d / avg


def adam_reference(w, g, m, v, step, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8,
                   weight_decay=0.0, decoupled_weight_decay=False):
    """As adam_element computes it, on the scalars adam_scalars derives
    (compiled: numba's beta ** step multiplies by repeated squaring, where
    Python calls pow), so that the two agree bit for bit in float64."""
    (one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, _, step_size,
     bias_correction2_sqrt) = adam_scalars(
        pack_hyper(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay),
        np.int64(step), w)
    if decoupled_weight_decay:
        w *= decay_factor
        d = g
    else:
        d = g + weight_decay * w
    m += one_minus_beta1 * (d - m)
    v[:] = beta2 * v + one_minus_beta2 * d * d
    w -= step_size * m / (np.sqrt(v) / bias_correction2_sqrt + eps)


def optimizer_update_reference(state, w, g):
    """One update of every element of w, as ``optimizer_update`` (NumPy)."""
    state.step[0] += 1
    step, h, rows, kind = int(state.step[0]), state.hyper, state.rows, int(state.kind)
    if kind == SGD:
        sgd_reference(w, g, rows[SGD_MOMENTUM], step, h[LR], h[MOMENTUM], h[DAMPENING],
                      bool(h[NESTEROV]), h[WEIGHT_DECAY])
    elif kind == RMSPROP:
        rmsprop_reference(w, g, rows[RMSPROP_SQUARE_AVG], rows[RMSPROP_GRAD_AVG],
                          rows[RMSPROP_MOMENTUM], h[LR], h[ALPHA], h[EPS], h[MOMENTUM],
                          h[WEIGHT_DECAY], bool(h[CENTERED]))
    else:
        adam_reference(w, g, rows[ADAM_EXP_AVG], rows[ADAM_EXP_AVG_SQ], step, h[LR], h[BETA1],
                       h[BETA2], h[EPS], h[WEIGHT_DECAY], bool(h[DECOUPLED]))


# ---- cpu ----
# The three updates are inlined into optimizer_update (below), one compiled
# function (with fewer separately compiled functions, numba compiles the
# engine sooner), and so into each engine, which picks one per step by the
# state's kind. Each reads the
# parameters from w and writes the updated ones to out, which may be w itself:
# the engine keeps the parameters of the step before in w (see network.py's
# Guard), the functional API updates in place.

@inline
def sgd_update(state, w, g, out):
    state.step[0] += 1
    lr, momentum, one_minus_dampening, nesterov, weight_decay, first_step = sgd_scalars(
        state.hyper, state.step[0], w)
    if momentum == 0:  # plain SGD: the momentum buffer is neither read nor written
        unused = w.dtype.type(0)
        for i in range(w.shape[0]):
            out[i], _ = sgd_element(w[i], g[i], unused, lr, momentum, one_minus_dampening,
                                    nesterov, weight_decay, first_step)
        return
    buf = state.rows[SGD_MOMENTUM]
    for i in range(w.shape[0]):
        out[i], buf[i] = sgd_element(w[i], g[i], buf[i], lr, momentum, one_minus_dampening,
                                     nesterov, weight_decay, first_step)


@inline
def rmsprop_update(state, w, g, out):
    state.step[0] += 1
    lr, alpha, one_minus_alpha, eps, momentum, weight_decay, centered = rmsprop_scalars(
        state.hyper, w)
    square_avg = state.rows[RMSPROP_SQUARE_AVG]
    grad_avg, buf = state.rows[RMSPROP_GRAD_AVG], state.rows[RMSPROP_MOMENTUM]
    for i in range(w.shape[0]):
        out[i], square_avg[i], grad_avg[i], buf[i] = rmsprop_element(
            w[i], g[i], square_avg[i], grad_avg[i], buf[i], lr, alpha, one_minus_alpha, eps,
            momentum, weight_decay, centered)


@inline
def adam_update(state, w, g, out):
    state.step[0] += 1
    (one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor, decoupled,
     step_size, bias_correction2_sqrt) = adam_scalars(state.hyper, state.step[0], w)
    m, v = state.rows[ADAM_EXP_AVG], state.rows[ADAM_EXP_AVG_SQ]
    for i in range(w.shape[0]):
        out[i], m[i], v[i] = adam_element(w[i], g[i], m[i], v[i], one_minus_beta1, beta2,
                                          one_minus_beta2, eps, weight_decay, decay_factor,
                                          decoupled, step_size, bias_correction2_sqrt)


def optimizer_update(state, w, g, out):
    """One update of every parameter in the flat buffer w from its gradient g,
    written to out (w itself for an update in place), by the optimizer
    ``state.kind``: compiled code holds the three updates and branches once
    per call; called from Python, the NumPy reference runs."""
    if out is not w:
        out[...] = w
    optimizer_update_reference(state, out, g)


@overload(optimizer_update)
def _optimizer_update_compiled(state, w, g, out):
    if not (isinstance(state, types.NamedTuple) and state.instance_class is OptimizerState):
        return None

    def update(state, w, g, out):
        if state.kind == SGD:
            sgd_update(state, w, g, out)
        elif state.kind == RMSPROP:
            rmsprop_update(state, w, g, out)
        else:
            adam_update(state, w, g, out)
    return update


@jit
def optimizer_update_compiled(state, w, g):
    """``optimizer_update`` compiled, in place, for callers in Python (the
    functional API). The update goes to a new array, then back into w: a loop
    whose output is its input (out is w) runs 4x slower, as LLVM cannot tell
    the two arrays apart when it compiles the update and keeps it scalar."""
    out = np.empty_like(w)
    optimizer_update(state, w, g, out)
    w[:] = out


# ---- gradient clipping: on the flat gradient buffer, before the update ----
# clip : (2,) float64, [max_norm, max_value] at the slots below; 0 turns that
#        clipping off. In data-parallel training the engine clips the
#        all-reduced gradients, so every process clips alike.
CLIP_NORM, CLIP_VALUE = 0, 1
#: torch.nn.utils.clip_grad_norm_'s eps: coef = max_norm / (norm + eps)
NORM_EPS = 1e-6


def clip_gradients_reference(clip, g):
    """torch.nn.utils.clip_grad_norm_ (one norm over every parameter, in
    float64) or clip_grad_value_, in place on the flat gradients g (NumPy)."""
    max_norm, max_value = clip[CLIP_NORM], clip[CLIP_VALUE]
    if max_norm > 0.0:
        with np.errstate(over="ignore"):  # the squares summed in order, as clip_gradients
            norm = np.sqrt(sum_in_order(g.astype(np.float64) ** 2))
        coef = max_norm / (norm + NORM_EPS)
        if not coef >= 1.0:  # PyTorch multiplies by min(coef, 1) (NaN included); by 1 is nothing
            g *= g.dtype.type(coef)
    if max_value > 0.0:
        np.clip(g, -max_value, max_value, out=g)


@jit
def clip_gradients(clip, g):
    """``clip_gradients_reference``, compiled: a pass over g for the norm (and
    one to scale it, when it is larger than max_norm), or one pass clamping
    every element to [-max_value, max_value] (NaN stays NaN)."""
    max_norm, max_value = clip[CLIP_NORM], clip[CLIP_VALUE]
    if max_norm > 0.0:
        total = 0.0
        for i in range(g.shape[0]):
            v = np.float64(g[i])
            total += v * v
        coef = max_norm / (math.sqrt(total) + NORM_EPS)
        if not coef >= 1.0:
            factor = g.dtype.type(coef)
            for i in range(g.shape[0]):
                g[i] *= factor
    if max_value > 0.0:
        high = g.dtype.type(max_value)
        low = -high
        for i in range(g.shape[0]):
            if g[i] > high:
                g[i] = high
            elif g[i] < low:
                g[i] = low
