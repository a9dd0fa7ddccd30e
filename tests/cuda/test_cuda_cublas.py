"""The cuBLAS route (kernels/cuda_cublas.py) without cuBLAS: ``FakeCublas``
stands in for nvmath.bindings.cublas and computes each cublasGemmEx call
with NumPy, as cuBLAS defines it (column-major operands at the given
addresses and leading dimensions, alpha and beta read from host memory),
on the simulator's device arrays, which live in host memory. So the
row-major-to-column-major mapping (operands swapped, transposes, leading
dimensions, live rows), the bias pass, the compute type asked for, and the
wiring of precision='tf32' from the Trainer to cuBLAS are checked here; the
real library runs on a GPU (bench/gpu_check.py). For TF32 the stand-in
rounds the operands to 10 mantissa bits, as the tensor cores take them."""

import ctypes
import enum
import functools

import numpy as np
import pytest
from numba import config, cuda

import fastnn as fn
from fastnn.kernels import cuda_cublas


@pytest.fixture(autouse=True)
def layer_by_layer_engine(monkeypatch):
    """These tests are about the layer-by-layer engine (kernels/cuda_network.py):
    the fused engine would take their small networks."""
    monkeypatch.setenv("FASTNN_CUDA_ENGINE", "layers")

if not config.ENABLE_CUDASIM:
    pytest.skip("the stand-in reads device memory from the host: simulator only",
                allow_module_level=True)

DTYPES = {cuda_cublas.CUDA_R_32F: np.float32, cuda_cublas.CUDA_R_64F: np.float64}


def host_address(device_array):
    """Where a simulated device array's first element is (host memory)."""
    return device_array.__array_interface__["data"][0]


def column_major(address, dtype, rows, cols, ld):
    """The rows x cols column-major matrix at address, leading dimension ld."""
    itemsize = np.dtype(dtype).itemsize
    extent = ((cols - 1) * ld + rows) * itemsize if rows and cols else 0
    return np.ndarray((rows, cols), dtype, buffer=(ctypes.c_byte * extent).from_address(address),
                      strides=(itemsize, ld * itemsize))


def tf32(x):
    """float32 rounded to TF32's 10 mantissa bits (to nearest)."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


class FakeCublas:
    """The calls CublasGemm makes, with cuBLAS's semantics."""

    class ComputeType(enum.IntEnum):
        COMPUTE_32F, COMPUTE_64F, COMPUTE_32F_FAST_TF32 = 68, 70, 77

    class Operation(enum.IntEnum):
        N, T = 0, 1

    class GemmAlgo(enum.IntEnum):
        DEFAULT = -1

    class PointerMode(enum.IntEnum):
        HOST = 0

    def __init__(self):
        self.compute_types, self.live = [], set()

    def create(self):
        self.live.add(len(self.live) + 1)
        return max(self.live)

    def destroy(self, handle):
        self.live.remove(handle)

    def set_pointer_mode(self, handle, mode):
        assert handle in self.live and mode == self.PointerMode.HOST

    def set_stream(self, handle, stream):
        assert handle in self.live and isinstance(stream, int)

    def set_workspace(self, handle, address, size):
        assert handle in self.live and size == cuda_cublas.WORKSPACE_BYTES

    def gemm_ex(self, handle, transa, transb, m, n, k, alpha, a, atype, lda, b, btype, ldb,
                beta, c, ctype, ldc, compute_type, algo):
        assert handle in self.live and atype == btype == ctype
        dtype = DTYPES[atype]
        self.compute_types.append(compute_type)

        def operand(address, trans, rows, cols, ld):  # op(X) is rows x cols
            stored = (rows, cols) if trans == self.Operation.N else (cols, rows)
            assert ld >= max(1, stored[0])
            x = column_major(address, dtype, *stored, ld)
            return x if trans == self.Operation.N else x.T

        op_a, op_b = operand(a, transa, m, k, lda), operand(b, transb, k, n, ldb)
        if compute_type == self.ComputeType.COMPUTE_32F_FAST_TF32:
            op_a, op_b = tf32(op_a), tf32(op_b)
        scalar = lambda address: column_major(address, dtype, 1, 1, 1)[0, 0]  # noqa: E731
        assert ldc >= m and scalar(beta) == 0  # beta = 0: C is written, never read
        out = column_major(c, dtype, m, n, ldc)
        out[...] = scalar(alpha) * (op_a.astype(np.float64) @ op_b.astype(np.float64))


@pytest.fixture
def fake_cublas(monkeypatch):
    library = FakeCublas()
    monkeypatch.setattr(cuda_cublas, "_pointer", host_address)
    monkeypatch.setattr(cuda_cublas, "cublas_available", lambda: True)
    monkeypatch.setattr(cuda_cublas, "CublasGemm",
                        functools.partial(cuda_cublas.CublasGemm, library=library))
    return library


PRODUCTS = {"forward": ((False, True), (9, 5, 4)), "input": ((False, False), (9, 4, 5)),
            "weight": ((True, False), (5, 4, 9))}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("product", list(PRODUCTS))
def test_cublas_products_are_the_row_major_products(fake_cublas, product, dtype):
    (trans_a, trans_b), (m, n, k) = PRODUCTS[product]
    rng = np.random.default_rng(0)
    capacity = m + 2
    a = rng.normal(size=(k, capacity) if trans_a else (capacity, k)).astype(dtype)
    b = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    bias = rng.normal(size=n).astype(dtype)
    ref = (a[:, :m].T if trans_a else a[:m]).astype(np.float64) @ \
        (b.T if trans_b else b).astype(np.float64) + bias
    c = cuda.to_device(np.full((capacity, n), np.nan, dtype))
    gemm = cuda_cublas.CublasGemm(dtype)
    gemm.product(cuda.to_device(a), cuda.to_device(b), c, m, k=k, trans_a=trans_a,
                 trans_b=trans_b, bias=cuda.to_device(bias))()
    out = c.copy_to_host()
    np.testing.assert_allclose(out[:m], ref, rtol=16 * np.finfo(dtype).eps,
                               atol=16 * np.finfo(dtype).eps * np.abs(ref).max())
    assert np.isnan(out[m:]).all()  # rows past the live ones are left alone
    gemm.close()
    assert not fake_cublas.live


def test_each_precision_asks_for_its_compute_type(fake_cublas):
    x = cuda.to_device(np.ones((2, 3), np.float32))
    for dtype, tf32, expected in ((np.float32, False, 68), (np.float32, True, 77),
                                  (np.float64, False, 70)):
        gemm = cuda_cublas.CublasGemm(dtype, tf32=tf32)
        operand = x if dtype == np.float32 else cuda.to_device(np.ones((2, 3)))
        out = cuda.device_array((2, 2), dtype)
        gemm.product(operand, operand, out, 2, trans_b=True)()
        assert fake_cublas.compute_types[-1] == expected
    with pytest.raises(ValueError, match="TF32 products take float32 data"):
        cuda_cublas.CublasGemm(np.float64, tf32=True)


def model():
    return fn.Sequential(fn.Dense(5, 6, bias=False), fn.BatchNorm(6), fn.ReLU(), fn.Dense(6, 2),
                         seed=0)


def test_training_through_cublas_matches_cpu(fake_cublas, monkeypatch):
    monkeypatch.setenv("FASTNN_CUDA_GEMM", "cublas")
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(7, 5)), rng.uniform(size=(7, 2))  # batches of 4 and 3
    results = {}
    for device in ("cpu", "cuda"):
        m = model()
        history = fn.Trainer(m, optimizer=fn.Adam(lr=0.01), device=device, dtype="float64",
                             seed=0).fit(X, Y, epochs=2, batch_size=4)
        results[device] = history["loss"], m.params.copy()
    np.testing.assert_allclose(results["cuda"][0], results["cpu"][0], rtol=1e-12)
    np.testing.assert_allclose(results["cuda"][1], results["cpu"][1], rtol=1e-10, atol=1e-12)
    assert set(fake_cublas.compute_types) == {70}  # every product went to cuBLAS, float64


def test_tf32_reaches_cublas_from_the_trainer(fake_cublas, recwarn):
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(8, 5)), rng.uniform(size=(8, 2))
    params = {}
    for precision in ("exact", "tf32"):
        m = model()
        trainer = fn.Trainer(m, optimizer=fn.SGD(lr=0.1), device="cuda", precision=precision,
                             seed=0)
        trainer.fit(X, Y, epochs=1, batch_size=4)
        params[precision] = m.params.copy()
    assert not [w for w in recwarn if "products stay float32" in str(w.message)]
    assert fake_cublas.compute_types[-1] == 77
    # TF32 rounds at 2^-11: close to float32's training, and not equal to it
    np.testing.assert_allclose(params["tf32"], params["exact"], rtol=2e-3, atol=2e-3)
    assert not np.array_equal(params["tf32"], params["exact"])
