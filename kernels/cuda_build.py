"""Compile every @cuda.jit kernel ahead of time, without a GPU.

``compile_all`` builds PTX for a compute capability (sm_90, Hopper, by
default) at each kernel's float32 and float64 signatures through NVVM, and
``resources`` links the PTX with nvJitLink to read what ptxas reports:
registers per thread, shared memory, local memory and spills;
``product_loops`` reads the instruction mix of a kernel's matrix-product
loops from its PTX. They need the CUDA toolkit libraries that
``pip install "numba-cuda[cu13]"`` brings; no driver and no device are
used. Run ``python -m fastnn.kernels.cuda_build`` for the table.
"""

import re
from contextlib import contextmanager
from types import SimpleNamespace

CC = (9, 0)


def all_signatures():
    """(name, kernel, argument types) for every kernel and dtype."""
    from . import cuda_fused, cuda_gemm, cuda_graph, cuda_ops
    return (cuda_gemm.signatures() + cuda_ops.signatures() + cuda_graph.signatures()
            + cuda_fused.signatures())


def compile_ptx(kernel, types, cc=CC):
    """The kernel's PTX for ``cc`` at the argument ``types``, with the
    kernel's own launch bounds and register limit."""
    from numba import cuda
    options = {key: value for key, value in kernel.targetoptions.items()
               if key in ("launch_bounds", "max_registers") and value is not None}
    with target_device(cc):
        ptx, _ = cuda.compile_ptx(kernel.py_func, types, cc=cc, **options)
    return ptx


@contextmanager
def target_device(cc):
    """numba-cuda compiles the device functions a kernel calls (those it does
    not inline into the kernel's own IR) for the compute capability of the
    current GPU; while compiling ahead of time here, a stand-in device
    reports ``cc`` instead (nothing else of a device is used)."""
    from numba.cuda import dispatcher
    current = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = current


def resources(ptx, cc=CC):
    """{'registers', 'smem', 'lmem', 'spill_stores', 'spill_loads'} from
    nvJitLink's verbose log of compiling ``ptx`` to a cubin.

    A kernel that uses cooperative groups is linked with the
    device runtime library, as numba-cuda links it; the figures are then
    read from the kernel's own entry of the log, not the library's."""
    from cuda.bindings import nvjitlink
    handle = nvjitlink.create(3, [f"-arch=sm_{cc[0]}{cc[1]}", "-verbose", "-O3"])
    try:
        data = ptx.encode()
        nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel")
        if "cudaCG" in ptx:
            from numba.cuda.cudadrv.libs import get_cudalib
            nvjitlink.add_file(handle, nvjitlink.InputType.LIBRARY,
                               get_cudalib("cudadevrt", static=True))
        nvjitlink.complete(handle)
        log = bytearray(nvjitlink.get_info_log_size(handle))
        nvjitlink.get_info_log(handle, log)
    finally:
        nvjitlink.destroy(handle)
    text = log.decode(errors="replace")
    entry = re.search(r"\.entry\s+([\w$]+)", ptx).group(1)
    # the ptxas lines of the entry (spills, registers), then the linker's (smem, lmem)
    sections = [part for part in re.split(r"(?=Compiling entry function|Function properties for)",
                                          text) if entry in part.split("\n", 1)[0]]
    text = "\n".join(sections) or text

    def number(pattern):
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return {"registers": number(r"[Uu]sed (\d+) registers"),
            "smem": number(r"(\d+) bytes smem"),
            "lmem": number(r"(\d+) bytes lmem"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads")}


def product_loops(ptx):
    """[(instructions, FMAs)] of each innermost loop of the PTX that
    multiplies out of shared memory: it has FMAs, loads only from shared
    memory and stores nothing (a tile product's inner loop; loops that stage
    operands, reduce or update are not). A loop is the code between a label
    and a branch back to it."""
    lines = [line.strip() for line in ptx.splitlines()]
    labels = {}
    for i, line in enumerate(lines):
        label = re.match(r"^(\$L__\w+):", line)
        if label:
            labels[label.group(1)] = i
    loops = []
    for j, line in enumerate(lines):
        target = re.search(r"\bbra(?:\.uni)?\s+(\$L__\w+);", line)
        if target and labels.get(target.group(1), j) < j:
            loops.append((labels[target.group(1)], j))
    found = []
    for i, j in loops:
        if any(i < a and b < j for a, b in loops):
            continue  # not innermost
        body = [re.sub(r"^@!?%\w+\s+", "", line) for line in lines[i:j + 1]
                if line.endswith(";") and not line.startswith((".", "//"))]
        ops = [line.split()[0] for line in body]
        fmas = sum(op.startswith("fma.") for op in ops)
        loads = [op for op in ops if op.startswith("ld.") and not op.startswith("ld.param")]
        if fmas and loads and all(op.startswith("ld.shared") for op in loads) and not any(
                op.startswith("st.") for op in ops):
            found.append((len(body), fmas))
    return found


def main():
    print("| kernel | registers | shared memory (B) | local memory (B) | spills (B) | product "
          "loop: instructions, FMAs |")
    print("|---|---|---|---|---|---|")
    for name, kernel, types in all_signatures():
        ptx = compile_ptx(kernel, types)
        r = resources(ptx)
        loops = ", ".join(sorted({f"{n}, {f}" for n, f in product_loops(ptx)})) or "-"
        print(f"| {name} | {r['registers']} | {r['smem']} | {r['lmem']} | "
              f"{r['spill_stores'] + r['spill_loads']} | {loops} |")


if __name__ == "__main__":
    main()
