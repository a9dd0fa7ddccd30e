"""Tiled shared-memory GEMM for the three products of a dense layer (CUDA).

Contract:
    C (M, N) = op(A) @ op(B) [+ bias (N,)]   with op(A) (M, K), op(B) (K, N)
    forward  y  = x @ w.T + b : gemm(x, w, y, trans_a=False, trans_b=True, bias=b)
    input    dx = dy @ w      : gemm(dy, w, dx, False, False)
    weight   dw = dy.T @ x    : gemm(dy, x, dw, True, False)
    A, B, C are row-major (C-contiguous) device arrays of one float dtype; the
    transposes are read in place, never materialized. ``m`` (the rows of C
    that are live) may be smaller than C's capacity, so a last short batch
    reuses the buffers of a full one.

Each 16 x 16 thread block computes a 64 x 64 tile of C; each thread keeps a
4 x 4 block of accumulators in registers (rows ty + 16 i, columns tx + 16 j,
so the shared-memory reads of a warp hit distinct banks). K advances in
chunks of 16 staged through shared memory. Out-of-range elements are loaded
as zeros, so any M, N, K works; the grid is computed from the shapes.
"""

import math

from numba import cuda, float32, float64, int64

TILE_M = TILE_N = 64
TILE_K = 16
THREADS = 16  # threads per block along each axis
PER_THREAD = TILE_M // THREADS  # outputs per thread along each axis

_KERNELS = {}


def _make_gemm(trans_a, trans_b, dtype):
    loads_a = TILE_M * TILE_K // (THREADS * THREADS)
    loads_b = TILE_N * TILE_K // (THREADS * THREADS)

    @cuda.jit
    def gemm(a, b, c, bias, m, n, k):
        a_tile = cuda.shared.array((TILE_K, TILE_M), dtype)
        b_tile = cuda.shared.array((TILE_K, TILE_N), dtype)
        acc = cuda.local.array((PER_THREAD, PER_THREAD), dtype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * THREADS + tx
        row0 = cuda.blockIdx.y * TILE_M
        col0 = cuda.blockIdx.x * TILE_N
        for i in range(PER_THREAD):
            for j in range(PER_THREAD):
                acc[i, j] = 0
        for k0 in range(0, k, TILE_K):
            for l in range(loads_a):
                e = tid + l * THREADS * THREADS
                if trans_a:  # A(r, kk) = a[kk, r]: consecutive threads walk r
                    r, kk = e % TILE_M, e // TILE_M
                else:        # A(r, kk) = a[r, kk]: consecutive threads walk kk
                    kk, r = e % TILE_K, e // TILE_K
                gr, gk = row0 + r, k0 + kk
                value = 0
                if gr < m and gk < k:
                    value = a[gk, gr] if trans_a else a[gr, gk]
                a_tile[kk, r] = value
            for l in range(loads_b):
                e = tid + l * THREADS * THREADS
                if trans_b:  # B(kk, q) = b[q, kk]
                    kk, q = e % TILE_K, e // TILE_K
                else:        # B(kk, q) = b[kk, q]
                    q, kk = e % TILE_N, e // TILE_N
                gq, gk = col0 + q, k0 + kk
                value = 0
                if gq < n and gk < k:
                    value = b[gq, gk] if trans_b else b[gk, gq]
                b_tile[kk, q] = value
            cuda.syncthreads()
            for kk in range(TILE_K):
                a_reg = cuda.local.array(PER_THREAD, dtype)
                b_reg = cuda.local.array(PER_THREAD, dtype)
                for i in range(PER_THREAD):
                    a_reg[i] = a_tile[kk, ty + THREADS * i]
                for j in range(PER_THREAD):
                    b_reg[j] = b_tile[kk, tx + THREADS * j]
                for i in range(PER_THREAD):
                    for j in range(PER_THREAD):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()
        for i in range(PER_THREAD):
            r = row0 + ty + THREADS * i
            if r < m:
                for j in range(PER_THREAD):
                    q = col0 + tx + THREADS * j
                    if q < n:
                        value = acc[i, j]
                        if bias.shape[0] > 0:
                            value += bias[q]
                        c[r, q] = value

    return gemm


def gemm_kernel(trans_a, trans_b, dtype):
    """The compiled-on-demand kernel for one (transposes, dtype) combination."""
    key = (bool(trans_a), bool(trans_b), dtype)
    if key not in _KERNELS:
        _KERNELS[key] = _make_gemm(key[0], key[1], float32 if dtype == float32 else float64)
    return _KERNELS[key]


def gemm(a, b, c, m, k=None, trans_a=False, trans_b=False, bias=None, stream=0):
    """Launch C[:m] = op(A) @ op(B) (+ bias) on device arrays (see the contract).

    k, the length of the products, defaults to op(A)'s column count; pass it
    when only the first k rows of a transposed A are live (dw = dy.T @ x).
    """
    n = c.shape[1]
    if k is None:
        k = a.shape[0] if trans_a else a.shape[1]
    dtype = float32 if c.dtype.itemsize == 4 else float64
    if bias is None:
        bias = c[0, :0]
    grid = (math.ceil(n / TILE_N), max(1, math.ceil(m / TILE_M)))
    gemm_kernel(trans_a, trans_b, dtype)[grid, (THREADS, THREADS), stream](a, b, c, bias, m, n, k)


def signatures():
    """(kernel, argument types) for every compiled variant, for PTX checks."""
    out = []
    for dtype in (float32, float64):
        for trans_a, trans_b in ((False, True), (False, False), (True, False)):
            arr = dtype[:, ::1]
            out.append((f"gemm_{'t' if trans_a else 'n'}{'t' if trans_b else 'n'}[{dtype}]",
                        gemm_kernel(trans_a, trans_b, dtype),
                        (arr, arr, arr, dtype[::1], int64, int64, int64)))
    return out
