"""Device primitives of the fused engine: the barrier between phases, the
work items of a phase, the tile product and the block reductions (CUDA
device functions, inlined into the epoch kernel).

Indices into shared memory, and into a model's flat arrays inside the
product, are unsigned 32-bit: numba then adds no negative-index wraparound,
the arithmetic is 32-bit, and NVVM can prove the alignment of a thread's
two adjacent values and load them as one vector. A model's flat arrays hold
far fewer than 2^32 elements within the engine's limits (plan.py).
"""

from numba import config, cuda, uint32 as U, uint64 as U64

from .plan import GRID, SIDE, STAGED, THREADS, TILE, TILE_K, TILE_ROW, UNROLL

SIMULATOR = bool(config.ENABLE_CUDASIM)
# Device functions are compiled once per signature and inlined by NVVM
# (forceinline): inlining them into their callers in numba's own IR instead
# copies each callee's IR at every call site and level, which took minutes
# for the epoch kernel. A function that returns a view of an array must be
# inlined in numba's IR (numba returns only arrays passed in): ``inline``.
# (The simulator runs Python and knows no forceinline.)
device = cuda.jit(device=True) if SIMULATOR else cuda.jit(device=True, forceinline=True)
inline = cuda.jit(device=True, inline="always")
# 16-byte aligned staging tiles (the simulator takes no alignment and needs none)
SHARED_ALIGNMENT = None if SIMULATOR else 16
TILE_WORDS = TILE_K * TILE_ROW  # one operand's staged slice, in elements


# ---- barriers ----

@device
def barrier(mode, counters, m, group):
    """The barrier between two phases: the block's (block mode: a model's
    group is one block) or the model's group of blocks (grid mode). ``mode``
    is a constant of the kernel, so the other branch compiles away."""
    if mode == GRID:
        group_barrier(counters, m, group)
    else:
        cuda.syncthreads()


@device
def group_barrier(counters, m, group):
    """Grid mode: the ``group`` blocks of model m wait for each other.

    counters[m] = (arrived, generation), int32, zero before the session's
    first launch (the last block to arrive resets ``arrived``, so they stay
    valid from launch to launch). Thread 0 of each block reads the
    generation, arrives, and then either opens the next generation (the last
    to arrive) or waits for it to open; the fences around that order every
    write of the group before the barrier before every read after it (the
    pattern of cooperative groups' grid sync, whose blocks must also all be
    resident at once: the kernel is launched cooperatively).

    Why not ``cuda.cg.this_grid().sync()``: it is a call into the device
    runtime library, and across that call the epoch kernel's live registers
    no longer fit (sm_90 PTX: 255 registers and 84 bytes of spills in
    float32, where this barrier keeps the kernel within its registers). It
    also waits for every model of the launch, where a model's blocks need
    only wait for each other."""
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        generation = cuda.atomic.add(counters, (m, 1), 0)
        cuda.threadfence()
        if cuda.atomic.add(counters, (m, 0), 1) == group - 1:
            cuda.atomic.exch(counters, (m, 0), 0)
            cuda.threadfence()
            cuda.atomic.add(counters, (m, 1), 1)
        else:
            while cuda.atomic.add(counters, (m, 1), 0) == generation:
                pass
        cuda.threadfence()
    cuda.syncthreads()


if SIMULATOR:
    @cuda.jit(device=True)
    def cooperative_blocks():
        cuda.cg.this_grid()
else:
    # Marks the kernel for a cooperative launch, which numba-cuda makes for
    # a kernel that takes a grid group (cuda.cg.this_grid()). Written with
    # the intrinsic behind it: the public function is an overload compiled
    # as a separate device function, which numba-cuda compiles only with a
    # GPU present (it asks the device for its compute capability), so the
    # kernel would not build to PTX on a machine without one.
    from numba.cuda.cg import _this_grid

    @device
    def cooperative_blocks():
        """All blocks resident at once (a cooperative launch)."""
        _this_grid()


# ---- work items ----

@device
def tiles(rows, cols):
    """The number of TILE x TILE tiles of a rows x cols product."""
    return ((rows + TILE - 1) // TILE) * ((cols + TILE - 1) // TILE)


@device
def chunks(cols, columns):
    """The number of ``columns``-wide chunks of cols features."""
    return (cols + columns - 1) // columns


@device
def lane_of(columns):
    """(feature, row lane) of this thread in a reduction's work item of
    ``columns`` features: THREADS // columns row lanes, consecutive threads
    on consecutive features of a row."""
    return cuda.threadIdx.x % columns, cuda.threadIdx.x // columns


# ---- the tile product ----

@device
def staged_slot(along_k):
    """(row, k) in an operand's slice of this thread's first staged element,
    and the rows, ks between its elements: consecutive threads run along the
    operand's contiguous axis (k when ``along_k``), so that they read
    consecutive addresses."""
    tid = U(cuda.threadIdx.x)
    if along_k:
        return tid // U(TILE_K), tid % U(TILE_K), U(THREADS // TILE_K), U(0)
    return tid % U(TILE), tid // U(TILE), U(0), U(THREADS // TILE)


@device
def load_slice(x, x_at, x_row, x_k, first, count, k0, depth, values):
    """This thread's STAGED elements of the TILE_K-deep slice at k0 of an
    operand X(i, k) = x[x_at + i * x_row + k * x_k], rows first ... first +
    TILE - 1, into ``values`` (registers): every load is issued before any
    value is used; rows at or beyond ``count`` and k at or beyond ``depth``
    are zero."""
    i, k, di, dk = staged_slot(x_k == 1)
    at = U(x_at) + (U(first) + i) * U(x_row) + (U(k0) + k) * U(x_k)
    step = di * U(x_row) + dk * U(x_k)
    zero = values.dtype.type(0)
    for s in range(STAGED):
        value = zero
        if first + i + U(s) * di < count and k0 + k + U(s) * dk < depth:
            value = x[at + U(s) * step]
        values[s] = value


@device
def store_slice(tile, values, x_k):
    """The staged ``values`` of load_slice into ``tile``, k-major: element
    (i, k) at k * TILE_ROW + i."""
    i, k, di, dk = staged_slot(x_k == 1)
    at = k * U(TILE_ROW) + i
    step = dk * U(TILE_ROW) + di
    for s in range(STAGED):
        tile[at + U(s) * step] = values[s]


@device
def put(c, c_at, r, col, rows, cols, value, bias, bias_at):
    """C[r, col] = value (+ bias[bias_at + col] when bias_at >= 0), inside
    the rows x cols output only."""
    if r < rows and col < cols:
        if bias_at >= 0:
            value += bias[U(bias_at) + col]
        c[U(c_at) + r * U(cols) + col] = value


@device
def product_tile(tile, a, a_at, a_row, a_k, b, b_at, b_k, b_col, c, c_at, rows, cols, depth,
                 bias, bias_at, a_tile, b_tile):
    """One TILE x TILE tile (numbered row-major) of C = A @ B (+ bias):

        C[i, j] = sum_k A(i, k) B(k, j) (+ bias[bias_at + j] when bias_at >= 0)
        A(i, k) = a[a_at + i * a_row + k * a_k]     (rows x depth)
        B(k, j) = b[b_at + k * b_k + j * b_col]     (depth x cols)
        C[i, j] -> c[c_at + i * cols + j]           (row-major, rows x cols)

    The strides read a transposed operand in place. The block stages a
    TILE_K-deep slice of A and of B in shared memory (a_tile, b_tile:
    TILE_WORDS each, k-major, rows padded to TILE_ROW), each thread holding
    its STAGED elements of the next slice in registers while the block
    multiplies this one. Each thread accumulates the 2 x 2 outputs of rows
    2 ty, 2 ty + 1 and columns 2 tx, 2 tx + 1 in registers: per step of k,
    one two-element load of A's slice, one of B's, four FMAs. k runs in
    steps of UNROLL, compile-time, zeros past ``depth`` (both operands are
    zero there), so the sums run in the order of k. Every thread of the
    block calls this together (it synchronizes the block)."""
    tid = U(cuda.threadIdx.x)
    tx, ty = tid % U(SIDE), tid // U(SIDE)
    tiles_across = (cols + TILE - 1) // TILE
    row0 = (tile // tiles_across) * TILE
    col0 = (tile % tiles_across) * TILE
    a_next = cuda.local.array(STAGED, c.dtype)
    b_next = cuda.local.array(STAGED, c.dtype)
    zero = c.dtype.type(0)
    c00 = zero
    c01 = zero
    c10 = zero
    c11 = zero
    a_own, b_own = U(2) * ty, U(2) * tx
    load_slice(a, a_at, a_row, a_k, row0, rows, 0, depth, a_next)
    load_slice(b, b_at, b_col, b_k, col0, cols, 0, depth, b_next)
    for k0 in range(0, depth, TILE_K):
        store_slice(a_tile, a_next, a_k)
        store_slice(b_tile, b_next, b_k)
        cuda.syncthreads()
        if k0 + TILE_K < depth:  # the next slice's loads, in flight during the products
            load_slice(a, a_at, a_row, a_k, row0, rows, k0 + TILE_K, depth, a_next)
            load_slice(b, b_at, b_col, b_k, col0, cols, k0 + TILE_K, depth, b_next)
        # 64-bit offsets here: a 32-bit one would be widened at every load,
        # where a 64-bit one lets each step's offset fold into the load
        a_at_k, b_at_k = U64(a_own), U64(b_own)
        for _ in range(0, min(TILE_K, depth - k0), UNROLL):
            for u in range(UNROLL):
                a0 = a_tile[a_at_k + U64(u * TILE_ROW)]
                a1 = a_tile[a_at_k + U64(u * TILE_ROW + 1)]
                b0 = b_tile[b_at_k + U64(u * TILE_ROW)]
                b1 = b_tile[b_at_k + U64(u * TILE_ROW + 1)]
                c00 += a0 * b0
                c01 += a0 * b1
                c10 += a1 * b0
                c11 += a1 * b1
            a_at_k += U64(UNROLL * TILE_ROW)
            b_at_k += U64(UNROLL * TILE_ROW)
        cuda.syncthreads()
    r, col = U(row0) + a_own, U(col0) + b_own
    put(c, c_at, r, col, rows, cols, c00, bias, bias_at)
    put(c, c_at, r, col + U(1), rows, cols, c01, bias, bias_at)
    put(c, c_at, r + U(1), col, rows, cols, c10, bias, bias_at)
    put(c, c_at, r + U(1), col + U(1), rows, cols, c11, bias, bias_at)


# ---- reductions ----

@device
def block_total(sums, value):
    """The float64 sum of ``value`` over the block's threads (a tree in
    shared memory); every thread gets it."""
    tid = cuda.threadIdx.x
    sums[tid] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if tid < step:
            sums[tid] += sums[tid + step]
        cuda.syncthreads()
        step //= 2
    total = sums[0]
    cuda.syncthreads()
    return total


@device
def lane_totals(red1, red2, value1, value2, lane, col, columns, rows):
    """The sums over the row lanes of two float64 partial sums of one
    feature (red1, red2: THREADS scratch each; THREADS // columns lanes, of
    which the first min(lanes, rows) hold rows), added in lane order
    (deterministic, and the cpu kernels' order while there are no more rows
    than lanes); every thread gets its feature's. Every thread of the block
    calls this together."""
    red1[lane * columns + col] = value1
    red2[lane * columns + col] = value2
    cuda.syncthreads()
    total1 = 0.0
    total2 = 0.0
    for q in range(min(THREADS // columns, rows)):
        total1 += red1[q * columns + col]
        total2 += red2[q * columns + col]
    cuda.syncthreads()
    return total1, total2
