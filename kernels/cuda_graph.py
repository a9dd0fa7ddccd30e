"""A training step as a fixed list of launches, run eagerly or replayed as
a CUDA graph.

Contract. A *plan* is the list of launches of one training step for a given
number of live rows: ``(callable, args)`` pairs whose every argument is fixed
when the plan is built (device arrays, and numbers that are the same at every
step: widths, the row count, grids). What changes from step to step lives in
device memory and is advanced by a kernel inside the step (``begin_step``):

    cursor  (1,) int64   the batch being trained, 0-based (-1 before the
                         first batch of an epoch); the gather reads rows
                         index[cursor * batch_size:], the loss goes to
                         losses[cursor]
    step    (1,) int64   the optimizer's step count (Adam's bias corrections,
                         SGD's first-step momentum), incremented before use
    counts  (L,) int64   BatchNorm's num_batches_tracked per layer (the
                         cumulative average of momentum=None), likewise
    hyper   (11,) float64 the optimizer's hyper-parameters; the lr is
                         written there between epochs (set_learning_rate)

Because a plan reads nothing from the host, running it again is the same as
replaying a graph captured from it, which is how one code path serves both:

    StepRunner.run(n)   eager: call the plan's launches
                        graphs: the first step with n rows runs eagerly (it
                        loads every kernel and lets cuBLAS pick its
                        algorithms: nothing may load, allocate or synchronize
                        during a capture); the second is captured into a
                        graph (one per row count: the last, shorter batch of
                        an epoch gets its own) and launched; later steps
                        replay that graph. A different batch size is a
                        different plan, hence a different graph.

``use_graphs()`` is the one place that decides eager or captured. The CUDA
simulator cannot capture graphs, so there the same plans run eagerly; the
capture itself goes through the CUDA driver's stream capture
(cuStreamBeginCapture/EndCapture, cuGraphInstantiate, cuGraphLaunch from
cuda.bindings.driver) on the numba stream the plan launches on, inside
``cuda.defer_cleanup()`` so that numba frees no memory during the capture.
numba-cuda 0.30.4 launches a kernel with cuLaunchKernelEx after marshalling
its arguments on the host (no allocation, copy or synchronization for device
array arguments), so its launches capture.
"""

from numba import config, cuda

from fastnn.core import config as settings


def use_graphs():
    """(True, '') when training steps are captured into CUDA graphs, else
    (False, why not)."""
    if config.ENABLE_CUDASIM:
        return False, "the CUDA simulator cannot capture graphs"
    if not settings.cuda_graphs():
        return False, "FASTNN_CUDA_GRAPHS=0"
    return True, ""


# ---- per-step scalars ----

@cuda.jit
def begin_epoch(cursor, losses):
    """cursor = -1 (no batch trained yet); losses = 0."""
    i = cuda.grid(1)
    if i == 0:
        cursor[0] = -1
    for j in range(i, losses.shape[0], cuda.gridsize(1)):
        losses[j] = 0.0


@cuda.jit
def begin_step(cursor, step, counts, batchnorm_layers):
    """One thread: the next batch, the next optimizer step, and one more
    batch tracked by every BatchNorm layer."""
    if cuda.grid(1) == 0:
        cursor[0] += 1
        step[0] += 1
        for j in range(batchnorm_layers.shape[0]):
            counts[batchnorm_layers[j]] += 1


def run_plan(plan):
    """Launch every (callable, args) of a plan, in order."""
    for launch, args in plan:
        launch(*args)


# ---- capture and replay through the CUDA driver ----

class DriverGraphs:
    """Stream capture and graph launch with cuda.bindings.driver."""

    def __init__(self):
        from cuda.bindings import driver
        self.driver = driver

    def _check(self, result, what):
        err = result[0]
        if err != self.driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"{what} failed: {err.name}")
        return result[1] if len(result) > 1 else None

    def capture(self, stream, plan):
        """The executable graph of the plan's launches on ``stream`` (a numba
        stream, not the default one); nothing runs until it is launched."""
        d = self.driver
        handle = int(stream.handle)
        with cuda.defer_cleanup():
            self._check(d.cuStreamBeginCapture(
                handle, d.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                "cuStreamBeginCapture")
            try:
                run_plan(plan)
            except BaseException:
                d.cuStreamEndCapture(handle)  # leave capture mode; that graph is void
                raise
            graph = self._check(d.cuStreamEndCapture(handle), "cuStreamEndCapture")
        try:
            return self._check(d.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        finally:
            d.cuGraphDestroy(graph)

    def launch(self, graph, stream):
        self._check(self.driver.cuGraphLaunch(graph, int(stream.handle)), "cuGraphLaunch")

    def release(self, graph):
        self.driver.cuGraphExecDestroy(graph)


class StepRunner:
    """Runs training steps by plan key (the batch size and the live rows):
    eagerly, or as CUDA graphs.

    Parameters
    ----------
    build_plan : callable key -> plan, the launches of one step
    stream : the numba stream the plans launch on
    graphs : DriverGraphs, None (eager), or an object with the same methods
        (the tests pass one that records captures and replays plans)
    """

    def __init__(self, build_plan, stream, graphs=None):
        self.build_plan, self.stream, self.graphs = build_plan, stream, graphs
        self.plans, self.executables, self.warmed = {}, {}, set()
        self.eager_steps = self.captures = self.replays = 0

    def prepare(self, keys):
        """Build the plans for these keys now (building may allocate), so
        that an epoch allocates nothing between its first and last step."""
        for key in keys:
            if key not in self.plans:
                self.plans[key] = self.build_plan(key)

    def run(self, key):
        """One training step (see the module docstring)."""
        self.prepare((key,))
        if self.graphs is None or key not in self.warmed:
            run_plan(self.plans[key])
            self.eager_steps += 1
            self.warmed.add(key)
            return
        if key not in self.executables:
            self.executables[key] = self.graphs.capture(self.stream, self.plans[key])
            self.captures += 1
        else:
            self.replays += 1
        self.graphs.launch(self.executables[key], self.stream)


def signatures():
    """(name, kernel, argument types) of the kernels above, for PTX checks."""
    from numba import float64, int64
    ints = int64[::1]
    return [("begin_epoch", begin_epoch, (ints, float64[::1])),
            ("begin_step", begin_step, (ints, ints, ints, ints))]
