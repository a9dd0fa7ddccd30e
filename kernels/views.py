"""Views of part of a flat buffer, made without a call and without a
reference count.

``flat[offset:offset + rows * cols].reshape((rows, cols))`` in compiled code
calls numba's reshape helper, a C function that LLVM cannot inline or remove:
about 30-70 ns per view. The engine takes a few dozen views per training step
(each layer's input, output, weight and gradients), which added up to several
microseconds of a step on the smallest networks. ``matrix_at`` builds the same
C-contiguous view directly: a pointer, a shape and strides; ``vector_at`` the
slice ``flat[offset:offset + n]``.

Neither view holds a reference to the buffer's memory (no meminfo): a slice
in compiled code takes one with an atomic increment, and gives it back with
an atomic decrement when it dies, about 40 cycles a view, which on the
smallest networks were a tenth of a training step. The views live only
inside an engine call, on buffers its caller holds, so they need none. They
check nothing either: the engine's offsets and sizes come from the layer
table and the workspace built for it.
"""

from numba import types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import make_array, populate_array


def matrix_at_reference(flat, offset, rows, cols):
    """What matrix_at gives, for the interpreter."""
    return flat[offset:offset + rows * cols].reshape((rows, cols))


@intrinsic
def matrix_at(typingctx, flat, offset, rows, cols):
    """The C-contiguous (rows, cols) view of flat[offset:offset + rows * cols]
    (flat: a 1-d C-contiguous array; offset, rows, cols: integers), holding
    no reference to flat's memory."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
        return None
    signature = types.Array(flat.dtype, 2, "C")(flat, offset, rows, cols)

    def codegen(context, builder, signature, args):
        flat_value = args[0]
        offset, rows, cols = (context.cast(builder, value, kind, types.intp)
                              for value, kind in zip(args[1:], signature.args[1:]))
        source = make_array(signature.args[0])(context, builder, flat_value)
        view = make_array(signature.return_type)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(
            context.get_data_type(signature.args[0].dtype)))
        populate_array(view, data=builder.gep(source.data, [offset], inbounds=True),
                       shape=cgutils.pack_array(builder, [rows, cols]),
                       strides=cgutils.pack_array(builder, [builder.mul(cols, itemsize), itemsize]),
                       itemsize=itemsize, meminfo=None, parent=source.parent)
        return view._getvalue()

    return signature, codegen


def vector_at_reference(flat, offset, n):
    """What vector_at gives, for the interpreter."""
    return flat[offset:offset + n]


@intrinsic
def vector_at(typingctx, flat, offset, n):
    """The view flat[offset:offset + n] (flat: a 1-d C-contiguous array),
    holding no reference to flat's memory."""
    if not (isinstance(flat, types.Array) and flat.ndim == 1 and flat.layout == "C"):
        return None
    signature = types.Array(flat.dtype, 1, "C")(flat, offset, n)

    def codegen(context, builder, signature, args):
        flat_value = args[0]
        offset, n = (context.cast(builder, value, kind, types.intp)
                     for value, kind in zip(args[1:], signature.args[1:]))
        source = make_array(signature.args[0])(context, builder, flat_value)
        view = make_array(signature.return_type)(context, builder)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(
            context.get_data_type(signature.args[0].dtype)))
        populate_array(view, data=builder.gep(source.data, [offset], inbounds=True),
                       shape=cgutils.pack_array(builder, [n]),
                       strides=cgutils.pack_array(builder, [itemsize]),
                       itemsize=itemsize, meminfo=None, parent=source.parent)
        return view._getvalue()

    return signature, codegen
