"""Device primitives of the fused engine: the barriers between phases, the
work items of a phase, the tile product and the block reductions (CUDA
device functions, inlined into the epoch kernel)."""

from numba import config, cuda

from .plan import COLUMNS, LANES, PER_THREAD, SIDE, THREADS, TILE, TILE_K

SIMULATOR = bool(config.ENABLE_CUDASIM)
device = cuda.jit(device=True, inline="always")

# ---- barriers ----
# Each takes the launch's barrier counters, the model and the blocks per
# model, so that the epoch kernel is one source for both modes.

@device
def block_barrier(counters, m, group):
    """Block mode: a model's group is one block."""
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


@device
def independent_blocks():
    """Block mode needs nothing of the launch."""


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
def chunks(cols):
    """The number of COLUMNS-wide chunks of cols features."""
    return (cols + COLUMNS - 1) // COLUMNS


@device
def gemm_tile(tile, a, a_at, a_row, a_col, b, b_at, b_row, b_col, c, c_at, rows, cols, depth,
              bias, bias_at, a_tile, b_tile):
    """One TILE x TILE tile (numbered row-major) of C = A @ B (+ bias):

        C[i, j] = sum_q A(i, q) B(q, j) (+ bias[bias_at + j] when bias_at >= 0)
        A(i, q) = a[a_at + i * a_row + q * a_col]   (rows x depth)
        B(q, j) = b[b_at + q * b_row + j * b_col]   (depth x cols)
        C[i, j] -> c[c_at + i * cols + j]           (row-major, rows x cols)

    The strides read a transposed operand in place. The block stages a
    TILE_K-deep slice of A and of B in shared memory (consecutive threads
    load along the operand's contiguous axis; the tiles are padded by one
    column against bank conflicts), then each thread multiplies its
    PER_THREAD x PER_THREAD outputs, rows ty + SIDE * i and columns
    tx + SIDE * j, accumulating in registers. Every thread of the block
    calls this together (it synchronizes the block)."""
    tid = cuda.threadIdx.x
    tx = tid % SIDE
    ty = tid // SIDE
    tiles_across = (cols + TILE - 1) // TILE
    row0 = (tile // tiles_across) * TILE
    col0 = (tile % tiles_across) * TILE
    acc = cuda.local.array((PER_THREAD, PER_THREAD), c.dtype)
    a_reg = cuda.local.array(PER_THREAD, c.dtype)
    b_reg = cuda.local.array(PER_THREAD, c.dtype)
    zero = c.dtype.type(0)
    for i in range(PER_THREAD):
        for j in range(PER_THREAD):
            acc[i, j] = zero
    for q0 in range(0, depth, TILE_K):
        for e in range(tid, TILE * TILE_K, THREADS):
            if a_col == 1:
                q, i = e % TILE_K, e // TILE_K
            else:
                i, q = e % TILE, e // TILE
            value = zero
            if row0 + i < rows and q0 + q < depth:
                value = a[a_at + (row0 + i) * a_row + (q0 + q) * a_col]
            a_tile[q, i] = value
            if b_col == 1:
                j, q = e % TILE, e // TILE
            else:
                q, j = e % TILE_K, e // TILE_K
            value = zero
            if col0 + j < cols and q0 + q < depth:
                value = b[b_at + (q0 + q) * b_row + (col0 + j) * b_col]
            b_tile[q, j] = value
        cuda.syncthreads()
        for q in range(min(TILE_K, depth - q0)):
            for i in range(PER_THREAD):
                a_reg[i] = a_tile[q, ty + SIDE * i]
            for j in range(PER_THREAD):
                b_reg[j] = b_tile[q, tx + SIDE * j]
            for i in range(PER_THREAD):
                for j in range(PER_THREAD):
                    acc[i, j] += a_reg[i] * b_reg[j]
        cuda.syncthreads()
    for i in range(PER_THREAD):
        r = row0 + ty + SIDE * i
        if r < rows:
            for j in range(PER_THREAD):
                col = col0 + tx + SIDE * j
                if col < cols:
                    value = acc[i, j]
                    if bias_at >= 0:
                        value += bias[bias_at + col]
                    c[c_at + r * cols + col] = value


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
def lane_totals(red1, red2, value1, value2, lane, col):
    """The sums over the LANES row lanes of two float64 partial sums of one
    feature, added in lane order (deterministic); every thread gets its
    feature's. Every thread of the block calls this together."""
    red1[lane, col] = value1
    red2[lane, col] = value2
    cuda.syncthreads()
    total1 = 0.0
    total2 = 0.0
    for q in range(LANES):
        total1 += red1[q, col]
        total2 += red2[q, col]
    cuda.syncthreads()
    return total1, total2

