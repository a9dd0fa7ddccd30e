"""Register-blocked, double-buffered shared-memory GEMM for the three
products of a dense layer (CUDA).

Contract:
    C (M, N) = op(A) @ op(B) [+ bias (N,)]   with op(A) (M, K), op(B) (K, N)
    forward  y  = x @ w.T + b : gemm(x, w, y, m, trans_b=True, bias=b)
    input    dx = dy @ w      : gemm(dy, w, dx, m)
    weight   dw = dy.T @ x    : gemm(dy, x, dw, n_out, k=m, trans_a=True)
    A, B, C are row-major (C-contiguous) device arrays of one float dtype; the
    transposes are read in place, never materialized. ``m`` (the rows of C
    that are live) may be smaller than C's capacity, and ``k`` smaller than
    op(A)'s columns, so a last short batch reuses the buffers of a full one.

The kernel. Each block of 256 threads computes a TILE x TILE tile of C
(128 x 128 in float32, 64 x 64 in float64, whose accumulators take twice the
registers); each thread keeps PER_THREAD x PER_THREAD accumulators in
registers (8 x 8 in float32, 4 x 4 in float64), for rows ty + 16 i and
columns tx + 16 j of the tile, so that the shared-memory reads of a warp hit
16 consecutive words (no bank conflicts: scalar loads, which is what numba
emits). K advances in chunks of K_CHUNK = 8 through two shared-memory
buffers: while the block multiplies out of one, each thread holds its part of
the next chunk, loaded from global memory into registers before the
products, and stores it into the other buffer after them, so one barrier
per chunk suffices and the global loads' latency hides behind the products.
Global loads are coalesced for every transpose: consecutive threads walk the
contiguous axis of the operand as stored; an operand whose contiguous axis is
K is stored into shared memory transposed, into rows padded by PAD words so
that those stores do not collide on a bank. Out-of-range elements load as
zeros, so any M, N, K works.

Split K. When the tiles of C alone would leave most multiprocessors idle
(C of 1024 x 1024 is 64 tiles of 128 x 128, for 132 multiprocessors on an
H100/H200), K is cut into ``splits`` ranges, one per blockIdx.z, each
writing its partial product into a (splits, M, N) workspace, and a second
kernel adds the partials (and the bias) in a fixed order: deterministic, and
the number of splits depends only on the shapes.
"""

import math

from numba import config, cuda, float32, float64, int64, uint32 as U

K_CHUNK = 8
THREADS = 16  # threads per block along each axis (256 per block)
PAD = 4       # words of padding per shared-memory row written transposed
# (tile edge, accumulators per thread along each axis) per dtype
TILING = {4: (128, 8), 8: (64, 4)}
# 16-byte aligned shared memory lets NVVM load a run of 4 floats with one
# ld.shared.v4 (the simulator takes no alignment and needs none)
SHARED_ALIGNMENT = None if config.ENABLE_CUDASIM else 16
MIN_K_PER_SPLIT = 128  # a split range of K shorter than this is not worth a launch
MAX_SPLITS = 8

_KERNELS = {}


def _make_gemm(trans_a, trans_b, dtype, tile, per_thread):
    """The kernel for one (transposes, dtype): C or its split-K partials."""
    threads = THREADS * THREADS
    loads_a = tile * K_CHUNK // threads    # elements of A each thread stages per chunk
    loads_b = tile * K_CHUNK // threads
    run = per_thread // 2                  # a thread's rows: two runs of `run`,
    half = tile // 2                       # `half` apart (columns alike)
    # shared-memory row length: padded when an operand is stored transposed;
    # one length for both, so that their indices share the arithmetic
    a_row = b_row = tile + (PAD if not trans_a or trans_b else 0)
    a_buffer, b_buffer = K_CHUNK * a_row, K_CHUNK * b_row
    a_words, b_words = 2 * a_buffer, 2 * b_buffer  # two buffers each

    @cuda.jit(device=True, inline="always")
    def a_slot(l, tid):
        """(k offset, row offset) in A's chunk of the l-th element this thread
        stages: consecutive threads walk A's contiguous axis."""
        e = tid + l * threads
        if trans_a:  # A(r, kk) = a[kk, r]
            return e // tile, e % tile
        return e % K_CHUNK, e // K_CHUNK  # A(r, kk) = a[r, kk]

    @cuda.jit(device=True, inline="always")
    def b_slot(l, tid):
        """(k offset, column offset) in B's chunk, as a_slot."""
        e = tid + l * threads
        if trans_b:  # B(kk, q) = b[q, kk]
            return e % K_CHUNK, e // K_CHUNK
        return e // tile, e % tile  # B(kk, q) = b[kk, q]

    @cuda.jit(device=True, inline="always")
    def a_value(a, gr, gk, m, k_end):
        """A(gr, gk), or zero outside the live rows and this split's K range."""
        if gr < m and gk < k_end:
            return a[gk, gr] if trans_a else a[gr, gk]
        return dtype(0)

    @cuda.jit(device=True, inline="always")
    def b_value(b, gk, gq, n, k_end):
        if gq < n and gk < k_end:
            return b[gq, gk] if trans_b else b[gk, gq]
        return dtype(0)

    @cuda.jit(device=True, inline="always")
    def at(buf, buffer, kk, row, offset):
        """Flat shared-memory index, unsigned: numba then adds no negative-
        index wraparound, and NVVM can prove that a run of consecutive
        words is 16-byte aligned and load it with one ld.shared.v4."""
        return U(buf) * U(buffer) + U(kk) * U(row) + U(offset)

    @cuda.jit(device=True, inline="always")
    def own(i, t):
        """Offset in the tile of the thread's i-th row (column), t = ty (tx)."""
        return (i // run) * half + t * run + i % run

    @cuda.jit
    def gemm(a, b, out, bias, m, n, k, k_per_split):
        """out[z, :m, :n] = the product over K range z (blockIdx.z), plus bias
        when bias is not empty."""
        a_tiles = cuda.shared.array(a_words, dtype, alignment=SHARED_ALIGNMENT)
        b_tiles = cuda.shared.array(b_words, dtype, alignment=SHARED_ALIGNMENT)
        acc = cuda.local.array((per_thread, per_thread), dtype)
        a_frag = cuda.local.array(per_thread, dtype)
        b_frag = cuda.local.array(per_thread, dtype)
        a_next = cuda.local.array(loads_a, dtype)
        b_next = cuda.local.array(loads_b, dtype)
        tid = cuda.threadIdx.x
        tx, ty = tid % THREADS, tid // THREADS
        row0 = cuda.blockIdx.y * tile
        col0 = cuda.blockIdx.x * tile
        split = cuda.blockIdx.z
        k_begin = split * k_per_split
        k_end = min(k, k_begin + k_per_split)
        for i in range(per_thread):
            for j in range(per_thread):
                acc[i, j] = 0
        # the first chunk goes straight into buffer 0
        for l in range(loads_a):
            kk, r = a_slot(l, tid)
            a_tiles[at(0, a_buffer, kk, a_row, r)] = a_value(a, row0 + r, k_begin + kk, m, k_end)
        for l in range(loads_b):
            kk, q = b_slot(l, tid)
            b_tiles[at(0, b_buffer, kk, b_row, q)] = b_value(b, k_begin + kk, col0 + q, n, k_end)
        cuda.syncthreads()
        buf = 0
        for k0 in range(k_begin, k_end, K_CHUNK):
            more = k0 + K_CHUNK < k_end
            if more:  # the next chunk, into registers, while this one is multiplied
                for l in range(loads_a):
                    kk, r = a_slot(l, tid)
                    a_next[l] = a_value(a, row0 + r, k0 + K_CHUNK + kk, m, k_end)
                for l in range(loads_b):
                    kk, q = b_slot(l, tid)
                    b_next[l] = b_value(b, k0 + K_CHUNK + kk, col0 + q, n, k_end)
            for kk in range(K_CHUNK):
                a_at = at(buf, a_buffer, kk, a_row, ty * run)
                b_at = at(buf, b_buffer, kk, b_row, tx * run)
                for i in range(run):
                    a_frag[i] = a_tiles[a_at + U(i)]
                    a_frag[run + i] = a_tiles[a_at + U(half + i)]
                    b_frag[i] = b_tiles[b_at + U(i)]
                    b_frag[run + i] = b_tiles[b_at + U(half + i)]
                for i in range(per_thread):
                    for j in range(per_thread):
                        acc[i, j] += a_frag[i] * b_frag[j]
            if more:  # into the other buffer: nobody reads it until the barrier
                for l in range(loads_a):
                    kk, r = a_slot(l, tid)
                    a_tiles[at(1 - buf, a_buffer, kk, a_row, r)] = a_next[l]
                for l in range(loads_b):
                    kk, q = b_slot(l, tid)
                    b_tiles[at(1 - buf, b_buffer, kk, b_row, q)] = b_next[l]
            cuda.syncthreads()
            buf = 1 - buf
        with_bias = bias.shape[0] > 0
        for i in range(per_thread):
            r = row0 + own(i, ty)
            if r < m:
                for j in range(per_thread):
                    q = col0 + own(j, tx)
                    if q < n:
                        value = acc[i, j]
                        if with_bias:
                            value += bias[q]
                        out[split, r, q] = value

    return gemm


@cuda.jit
def add_split_partials(partials, splits, m, bias, c):
    """c[r, q] = sum over s < splits of partials[s, r, q] (+ bias[q]), r < m,
    summed in the order of s."""
    i = cuda.grid(1)
    n = c.shape[1]
    if i < m * n:
        r, q = i // n, i % n
        value = partials[0, r, q]
        for s in range(1, splits):
            value += partials[s, r, q]
        if bias.shape[0] > 0:
            value += bias[q]
        c[r, q] = value


@cuda.jit
def add_bias(c, bias, m):
    """c[r, q] += bias[q] for r < m (the bias of a product made without one)."""
    i = cuda.grid(1)
    n = c.shape[1]
    if i < m * n:
        c[i // n, i % n] += bias[i % n]


def gemm_kernel(trans_a, trans_b, dtype):
    """The compiled-on-demand kernel for one (transposes, dtype) combination."""
    key = (bool(trans_a), bool(trans_b), dtype)
    if key not in _KERNELS:
        numba_dtype = float32 if dtype == float32 else float64
        tile, per_thread = TILING[4 if numba_dtype == float32 else 8]
        _KERNELS[key] = _make_gemm(key[0], key[1], numba_dtype, tile, per_thread)
    return _KERNELS[key]


_MULTIPROCESSORS = []


def multiprocessors():
    """The current device's multiprocessor count (132 on an H100/H200 SXM),
    read once; the simulator's device reports none, and gets 1."""
    if not _MULTIPROCESSORS:
        count = getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)
        _MULTIPROCESSORS.append(int(count) if isinstance(count, int) else 1)
    return _MULTIPROCESSORS[0]


def split_count(m, n, k, itemsize):
    """How many ranges K is cut into: as many blocks as multiprocessors at
    most (a second, partial wave would cost more than it gives), each range
    at least MIN_K_PER_SPLIT long."""
    tile = TILING[itemsize][0]
    tiles = math.ceil(m / tile) * math.ceil(n / tile)
    wanted = multiprocessors() // max(tiles, 1)
    return max(1, min(wanted, k // MIN_K_PER_SPLIT, MAX_SPLITS))


def workspace_size(m, n, k, itemsize):
    """Elements of split-K workspace a product of this shape uses (0: none)."""
    splits = split_count(m, n, k, itemsize)
    return 0 if splits == 1 else splits * m * n


class GemmLaunch:
    """One product's launches, with every argument fixed: calling it runs
    them on ``stream`` (a CUDA graph can capture the call).

    Parameters
    ----------
    a, b, c : device arrays (see the contract)
    m : int, live rows of C
    k : int or None, the length of the products (default op(A)'s columns)
    trans_a, trans_b : bool
    bias : device array (N,) or None
    stream : numba stream or 0
    workspace : flat device array of C's dtype or None; when given and large
        enough, K is split as ``split_count`` says
    splits : int or None, forces the number of K ranges (needs a workspace)
    """

    def __init__(self, a, b, c, m, k=None, trans_a=False, trans_b=False, bias=None, stream=0,
                 workspace=None, splits=None):
        n = c.shape[1]
        if k is None:
            k = a.shape[0] if trans_a else a.shape[1]
        dtype = float32 if c.dtype.itemsize == 4 else float64
        tile = TILING[c.dtype.itemsize][0]
        if splits is None:
            splits = split_count(m, n, k, c.dtype.itemsize) if workspace is not None else 1
        k_per_split = math.ceil(math.ceil(k / splits) / K_CHUNK) * K_CHUNK
        splits = max(1, math.ceil(k / k_per_split)) if k > 0 else 1
        if bias is None:
            bias = c[0, :0]
        grid = (math.ceil(n / tile), max(1, math.ceil(m / tile)), splits)
        kernel = gemm_kernel(trans_a, trans_b, dtype)[grid, THREADS * THREADS, stream]
        if splits == 1:
            self.launches = [(kernel, (a, b, c.reshape(1, *c.shape), bias, m, n, k, k_per_split))]
        else:
            if workspace is None or workspace.shape[0] < splits * m * n:
                raise ValueError(f"split-K product needs a workspace of {splits * m * n} "
                                 f"elements")
            partials = workspace[:splits * m * n].reshape(splits, m, n)
            blocks = max(1, math.ceil(m * n / 256))
            self.launches = [
                (kernel, (a, b, partials, c[0, :0], m, n, k, k_per_split)),
                (add_split_partials[blocks, 256, stream], (partials, splits, m, bias, c))]
        self.splits = splits

    def __call__(self):
        for launch, args in self.launches:
            launch(*args)


class NumbaGemm:
    """fastnn's GEMM as a training session's product engine (the interface
    kernels/cuda_cublas.py's CublasGemm shares): ``product`` returns the
    launches of one product with every argument fixed, ready for a plan.
    The split-K workspace is allocated while plans are built and grows to
    the largest product seen."""

    name = "numba"

    def __init__(self, stream=0, allocate=cuda.device_array):
        self.stream, self.allocate, self.workspace = stream, allocate, None

    def product(self, a, b, c, m, k=None, trans_a=False, trans_b=False, bias=None):
        """A callable that launches C[:m] = op(A) @ op(B) (+ bias)."""
        if k is None:
            k = a.shape[0] if trans_a else a.shape[1]
        needed = workspace_size(m, c.shape[1], k, c.dtype.itemsize)
        if needed and (self.workspace is None or self.workspace.shape[0] < needed):
            self.workspace = self.allocate(needed, c.dtype)
        return GemmLaunch(a, b, c, m, k, trans_a, trans_b, bias, self.stream,
                          self.workspace if needed else None)

    def close(self):
        self.workspace = None


def gemm(a, b, c, m, k=None, trans_a=False, trans_b=False, bias=None, stream=0,
         workspace=None, splits=None):
    """Launch C[:m] = op(A) @ op(B) (+ bias) on device arrays (see GemmLaunch)."""
    GemmLaunch(a, b, c, m, k, trans_a, trans_b, bias, stream, workspace, splits)()


def signatures():
    """(kernel, argument types) for every compiled variant, for PTX checks."""
    out = []
    for dtype in (float32, float64):
        matrix, partials = dtype[:, ::1], dtype[:, :, ::1]
        for trans_a, trans_b in ((False, True), (False, False), (True, False)):
            out.append((f"gemm_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}[{dtype}]",
                        gemm_kernel(trans_a, trans_b, dtype),
                        (matrix, matrix, partials, dtype[::1], int64, int64, int64, int64)))
        out.append((f"add_split_partials[{dtype}]", add_split_partials,
                    (partials, int64, int64, dtype[::1], matrix)))
        out.append((f"add_bias[{dtype}]", add_bias, (matrix, dtype[::1], int64)))
    return out

