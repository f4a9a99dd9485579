"""Builds the CUDA kernels (kernels/*.cu) for the CPU CUDA-semantics runtime (csrc/cudasim): a shared library that
registers them as torch.ops.relground_cudasim.* on CPU tensors, next to the real torch.ops.relground.*.

Each kernels/<op>_cuda.cu is compiled unchanged by g++ as C++ with RELGROUND_CUDASIM defined: its launches go through
kernels/cuda_helpers.cuh's launch_kernel (the runtime's launch here, <<<>>> under nvcc), csrc/cudasim/include
shadows the three ATen/c10 CUDA headers the host code includes, and the host functions register for the CPU key.
The op schemas and host checks (csrc/ops/*.cpp) are compiled in too. `-Drelground=relground_cudasim` renames the
C++ namespace and the op namespace, so that the library and relground._C load into one process without clashing.

Objects are cached under build/cudasim/objects (git-ignored), keyed by the hash of their source, every header and the
flags: an unchanged tree relinks nothing, a changed kernel recompiles that file only (~40 s each on one core).

usage: python scripts/build_cudasim.py [--sanitize address|thread] [--override DIR] [--out DIR] [--jobs N]
       prints the library's path.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import hashlib
import os
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_NAME = "librelground_cudasim.so"


def _headers() -> list[str]:
    patterns = ("csrc/include/relground/*.h", "kernels/*.cuh", "csrc/cudasim/include/**/*.h")
    return sorted(p for pattern in patterns for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def sources(override: str | None = None) -> list[str]:
    """The translation units: every kernels/*.cu (or its namesake in `override`), csrc/ops/*.cpp, the self-test."""
    units = []
    for cu in sorted(glob.glob(os.path.join(ROOT, "kernels", "*.cu"))):
        replacement = os.path.join(override, os.path.basename(cu)) if override else None
        units.append(replacement if replacement and os.path.exists(replacement) else cu)
    for cpp in sorted(glob.glob(os.path.join(ROOT, "csrc", "ops", "*.cpp"))):
        replacement = os.path.join(override, os.path.basename(cpp)) if override else None
        units.append(replacement if replacement and os.path.exists(replacement) else cpp)
    units.append(os.path.join(ROOT, "csrc", "cudasim", "selftest.cpp"))
    return units


def compile_flags(sanitize: str | None, opt: str) -> list[str]:
    import torch
    from torch.utils.cpp_extension import include_paths

    flags = [
        "-std=c++20", opt, "-g", "-fPIC", "-pthread", f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        # No FMA contraction: nvcc builds the kernels with -fmad=false (setup.py), so both compute op for op.
        "-ffp-contract=off",
        "-DRELGROUND_CUDASIM", "-Drelground=relground_cudasim", "-Wall", "-Wno-unused-function", "-Wno-unknown-pragmas",
        f"-I{ROOT}/csrc/cudasim/include", f"-I{ROOT}/csrc/include", f"-I{ROOT}/kernels",
    ]
    flags += [f"-isystem{p}" for p in include_paths()] + [f"-isystem{sysconfig.get_paths()['include']}"]
    if sanitize:
        flags += [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer"]
    return flags


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:20]


def _compile(src: str, obj: str, flags: list[str]) -> None:
    tmp = obj + ".tmp"
    cmd = ["g++", "-x", "c++", *flags, "-c", src, "-o", tmp]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"cudasim build: g++ failed on {src}:\n{result.stderr[-6000:]}")
    os.replace(tmp, obj)


def build(sanitize: str | None = None, override: str | None = None, out: str | None = None, jobs: int | None = None,
          opt: str = "-O1", verbose: bool = False) -> str:
    """Builds (or finds in the cache) the runtime library; returns its path."""
    from torch.utils.cpp_extension import library_paths

    flavor = sanitize or "plain"
    cache = os.path.join(ROOT, "build", "cudasim", "objects")
    out = out or os.path.join(ROOT, "build", "cudasim", flavor)
    os.makedirs(cache, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    flags = compile_flags(sanitize, opt)
    header_bytes = [open(h, "rb").read() for h in _headers()]
    todo, objects = [], []
    for src in sources(override):
        # Only the units with kernels (and the runtime) are instrumented: the schemas and host checks of
        # csrc/ops/*.cpp reuse the plain objects, which saves ~4 compiles per sanitizer build.
        unit_flags = flags if src.endswith((".cu", "selftest.cpp")) else compile_flags(None, opt)
        key = _digest([open(src, "rb").read(), " ".join(unit_flags).encode(), *header_bytes])
        obj = os.path.join(cache, f"{os.path.basename(src)}.{key}.o")
        objects.append(obj)
        if not os.path.exists(obj):
            todo.append((src, obj, unit_flags))
    jobs = jobs or int(os.environ.get("MAX_JOBS", "0") or 0) or min(2, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = []
        for src, obj, unit_flags in todo:
            if verbose:
                print(f"cudasim build: compiling {os.path.relpath(src, ROOT)}", flush=True)
            futures.append(pool.submit(_compile, src, obj, unit_flags))
        for future in futures:
            future.result()
    lib = os.path.join(out, LIBRARY_NAME)
    stamp = os.path.join(out, LIBRARY_NAME + ".objects")
    manifest = "\n".join(objects)
    if not os.path.exists(lib) or not os.path.exists(stamp) or open(stamp).read() != manifest:
        link = ["g++", "-shared", "-pthread", *objects, "-o", lib + ".tmp"]
        link += [f"-L{p}" for p in library_paths()] + [f"-Wl,-rpath,{p}" for p in library_paths()]
        link += ["-lc10", "-ltorch_cpu"] + ([f"-fsanitize={sanitize}"] if sanitize else [])
        subprocess.run(link, check=True)
        os.replace(lib + ".tmp", lib)
        with open(stamp, "w") as f:
            f.write(manifest)
    return lib


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sanitize", choices=("address", "thread"), default=None)
    parser.add_argument("--override", default=None, help="folder of .cu / csrc/ops .cpp files replacing the project's")
    parser.add_argument("--out", default=None, help="folder of the library (default build/cudasim/<flavor>)")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--opt", default="-O1")
    args = parser.parse_args(argv)
    print(build(args.sanitize, args.override, args.out, args.jobs, args.opt, verbose=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
