"""Compile every @cuda.jit kernel ahead of time, without a GPU.

``compile_all`` builds PTX for a compute capability (sm_90, Hopper, by
default) at each kernel's float32 and float64 signatures through NVVM, and
``resources`` links the PTX with nvJitLink to read what ptxas reports:
registers per thread, shared memory, local memory and spills. Both need the
CUDA toolkit libraries that ``pip install "numba-cuda[cu13]"`` brings; no
driver and no device are used. Run ``python -m fastnn.kernels.cuda_build``
for the table.
"""

import re

CC = (9, 0)


def all_signatures():
    """(name, kernel, argument types) for every kernel and dtype."""
    from . import cuda_fused, cuda_gemm, cuda_graph, cuda_ops
    return (cuda_gemm.signatures() + cuda_ops.signatures() + cuda_graph.signatures()
            + cuda_fused.signatures())


def compile_ptx(kernel, types, cc=CC):
    from numba import cuda
    ptx, _ = cuda.compile_ptx(kernel.py_func, types, cc=cc)
    return ptx


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


def main():
    print("| kernel | registers | shared memory (B) | local memory (B) | spills (B) |")
    print("|---|---|---|---|---|")
    for name, kernel, types in all_signatures():
        r = resources(compile_ptx(kernel, types))
        print(f"| {name} | {r['registers']} | {r['smem']} | {r['lmem']} | "
              f"{r['spill_stores'] + r['spill_loads']} |")


if __name__ == "__main__":
    main()
