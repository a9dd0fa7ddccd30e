"""The dense layers' matrix products through cuBLAS, by nvmath-python's
bindings (``pip install "fastnn[cuda]"``), and the choice between cuBLAS and
fastnn's own GEMM.

Contract: the same as kernels/cuda_gemm.py (C[:m] = op(A) @ op(B) [+ bias],
row-major device arrays, transposes read in place, ``m`` live rows, ``k``
the length of the products). cuBLAS is column-major, and a row-major matrix
is the column-major view of its transpose, so C = op(A) op(B) is computed as
C^T = op(B)^T op(A)^T: cublasGemmEx(op_b, op_a, N, m, k, B, A, C) with the
leading dimensions the row lengths as stored. The bias, when there is one,
is added by a separate pass (``cuda_gemm.add_bias``); ``Dense(bias=False)``
has none.

Every call goes to the stream given at construction, with the scalars
alpha = 1, beta = 0 in host memory (read when the call is made, hence baked
into a captured graph) and a workspace set once (cublasSetWorkspace), so
that cuBLAS allocates nothing during a stream capture.

``precision="tf32"`` computes with CUBLAS_COMPUTE_32F_FAST_TF32: float32
data, products on TF32 tensor cores (inputs rounded to 10 mantissa bits),
float32 accumulation.
"""

import math

import numpy as np
from numba import config, cuda

from fastnn.core import config as settings

from .cuda_gemm import NumbaGemm, add_bias

WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommendation for Hopper
CUDA_R_32F, CUDA_R_64F = 0, 1  # cudaDataType_t (library_types.h)


def cublas_available():
    """True when nvmath-python's cuBLAS bindings import (never in the simulator)."""
    if config.ENABLE_CUDASIM:
        return False
    try:
        from nvmath.bindings import cublas  # noqa: F401
    except ImportError:
        return False
    return True


def gemm_choice():
    """'cublas' or 'numba': FASTNN_CUDA_GEMM when set to one of them, else
    cuBLAS whenever it is installed."""
    wanted = settings.cuda_gemm()
    if wanted == "auto":
        return "cublas" if cublas_available() else "numba"
    if wanted == "cublas" and not cublas_available():
        raise ValueError("FASTNN_CUDA_GEMM=cublas needs nvmath-python: "
                         "pip install \"fastnn[cuda]\"")
    return wanted


def make_gemm(dtype, stream, tf32=False, allocate=cuda.device_array):
    """The product engine a training session uses (see gemm_choice); tf32
    needs cuBLAS. ``allocate(shape, dtype)`` makes fastnn's GEMM's split-K
    workspace."""
    if tf32:
        if not cublas_available():
            raise ValueError("precision='tf32' needs cuBLAS: pip install \"fastnn[cuda]\" "
                             "(nvmath-python)")
        return CublasGemm(dtype, stream, tf32=True)
    if gemm_choice() == "cublas":
        return CublasGemm(dtype, stream)
    return NumbaGemm(stream, allocate)


class CublasGemm:
    """Products through cublasGemmEx on one stream (see the module docstring).

    Parameters
    ----------
    dtype : np.float32 or np.float64
    stream : numba stream (or 0, the default stream)
    tf32 : bool, float32 products on TF32 tensor cores
    library : the cuBLAS bindings, by default nvmath.bindings.cublas (the
        tests pass a stand-in that computes with NumPy)
    """

    name = "cublas"

    def __init__(self, dtype, stream=0, tf32=False, library=None):
        if library is None:
            from nvmath.bindings import cublas as library
        cublas = self.cublas = library
        self.stream = stream
        dtype = np.dtype(dtype)
        if tf32 and dtype != np.float32:
            raise ValueError("TF32 products take float32 data")
        self.data_type = CUDA_R_32F if dtype == np.float32 else CUDA_R_64F
        compute = cublas.ComputeType
        self.compute_type = int(compute.COMPUTE_32F_FAST_TF32 if tf32 else
                                compute.COMPUTE_32F if dtype == np.float32 else
                                compute.COMPUTE_64F)
        self.name = "cublas-tf32" if tf32 else "cublas"
        self.one, self.zero = np.ones(1, dtype), np.zeros(1, dtype)  # alpha, beta (host)
        self.handle = cublas.create()
        cublas.set_pointer_mode(self.handle, int(cublas.PointerMode.HOST))
        handle = getattr(stream, "handle", None)  # None: the default stream, or the simulator
        cublas.set_stream(self.handle, 0 if handle is None else int(handle))
        self.workspace = cuda.device_array(WORKSPACE_BYTES, np.uint8)
        cublas.set_workspace(self.handle, _pointer(self.workspace), WORKSPACE_BYTES)

    def product(self, a, b, c, m, k=None, trans_a=False, trans_b=False, bias=None):
        """A callable that launches C[:m] = op(A) @ op(B) (+ bias)."""
        return CublasProduct(self, a, b, c, m, k, trans_a, trans_b, bias)

    def close(self):
        if self.handle:
            self.cublas.destroy(self.handle)
            self.handle = 0


class CublasProduct:
    """One product's cuBLAS call (and bias pass) with every argument fixed."""

    def __init__(self, gemm, a, b, c, m, k, trans_a, trans_b, bias):
        op = gemm.cublas.Operation
        n = c.shape[1]
        if k is None:
            k = a.shape[0] if trans_a else a.shape[1]
        self.gemm = gemm
        # (op_b, op_a, N, m, k, alpha, B, ldb, A, lda, beta, C, ldc) in column-major terms
        self.args = (int(op.T if trans_b else op.N), int(op.T if trans_a else op.N), n, m, k,
                     gemm.one.ctypes.data, _pointer(b), b.shape[1], _pointer(a), a.shape[1],
                     gemm.zero.ctypes.data, _pointer(c), c.shape[1])
        self.bias_pass = None
        if bias is not None:
            blocks = max(1, math.ceil(m * n / 256))
            self.bias_pass = (add_bias[blocks, 256, gemm.stream], (c, bias, m))
        self.keep = (a, b, c, bias)  # the device memory the pointers point into

    def __call__(self):
        g = self.gemm
        op_b, op_a, n, m, k, alpha, b, ldb, a, lda, beta, c, ldc = self.args
        g.cublas.gemm_ex(g.handle, op_b, op_a, n, m, k, alpha, b, g.data_type, ldb, a,
                         g.data_type, lda, beta, c, g.data_type, ldc, g.compute_type,
                         int(g.cublas.GemmAlgo.DEFAULT))
        if self.bias_pass is not None:
            launch, args = self.bias_pass
            launch(*args)


def _pointer(device_array):
    """The device address of a numba device array's first element."""
    return device_array.__cuda_array_interface__["data"][0]
