"""What the benchmarks share: the harnesses of ``fastnn bench``'s peers,
PyTorch (eager on the CPU, one training step replayed as a CUDA graph on the
GPU, torch_harness.py) and JAX (the whole epoch as one jitted ``lax.scan``,
jax_harness.py), and the table of kernel cases that the tests check and
bench/ times (cases.py).

Each harness takes a fastnn model and returns a function that trains one
epoch of the same network from the same weights, on the same batches, with
the same loss (BCE on logits) and optimizer as fastnn's engines. fastnn.bench
imports a harness only in the worker process that measures that peer, so
torch and jax are needed only there and only when installed. Nothing else in
fastnn imports this package.
"""
