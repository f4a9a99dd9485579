"""Injects classic CUDA bugs into the kernels, one at a time, and shows that the CPU CUDA-semantics runtime's tests
catch each: evidence that tests/cudasim can fail.

Each bug is a text edit of one file (kernels/*.cu or csrc/ops/*.cpp), written to build/cudasim/mutants/<bug>/ and
built with scripts/build_cudasim.py --override (only that file recompiles). Then the detectors run in order until one
fails: `tests` (pytest tests/cudasim on the plain build), `asan` (the same under AddressSanitizer), `tsan` (under
ThreadSanitizer, blocks run 4 at a time where the kernel has no __shared__). A bug no detector catches fails the
script. Prints a Markdown table: bug, file, what caught it, the first line of its report.

usage: python scripts/inject_kernel_bugs.py [--only NAME ...] [--detectors tests asan tsan] [--all-detectors]
       (~2-4 min per bug on 2 idle cores: one file recompiles per detector)
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import build_cudasim  # noqa: E402


@dataclasses.dataclass
class Bug:
    name: str
    what: str
    path: str  # relative to the repository
    old: str
    new: str


BUGS = [
    Bug("missing_syncthreads", "the __syncthreads after the shared-memory stores removed", "kernels/self_taught_targets_cuda.cu",
        "  best_index[threadIdx.x] = my_index;\n  __syncthreads();\n", "  best_index[threadIdx.x] = my_index;\n"),
    Bug("divergent_syncthreads", "the reduction's __syncthreads moved inside `if (threadIdx.x < stride)`",
        "kernels/self_taught_targets_cuda.cu",
        "      best_index[threadIdx.x] = best_index[threadIdx.x + stride];\n    }\n    __syncthreads();\n  }\n",
        "      best_index[threadIdx.x] = best_index[threadIdx.x + stride];\n      __syncthreads();\n    }\n  }\n"
        "  __syncthreads();\n"),
    Bug("oversize_block", "topk_select's block of up to 2048 threads", "kernels/topk_select_cuda.cu",
        "constexpr int kMaxThreads = 256;", "constexpr int kMaxThreads = 2048;"),
    Bug("lane_exit_before_shuffle", "a lane without pixels returns before the warp reduction",
        "kernels/roi_align_avg_cuda.cu",
        "  const scalar_t* plane = input + (n * channels + c) * height * width;\n",
        "  if (x_lo + lane > x_hi) return;  // this lane has no pixels\n"
        "  const scalar_t* plane = input + (n * channels + c) * height * width;\n"),
    Bug("out_of_bounds_read", "topk_select compares one entry past the row (i <= M)", "kernels/topk_select_cuda.cu",
        "    for (int64_t i = 0; i < M; ++i) {", "    for (int64_t i = 0; i <= M; ++i) {"),
    Bug("atomicadd_as_plus_equals", "the NHWC backward's atomicAdd replaced by +=", "kernels/roi_align_avg_cuda.cu",
        "if (w != acc_t(0)) atomicAdd(row + x * channels, g * w);", "if (w != acc_t(0)) row[x * channels] += g * w;"),
    Bug("non_power_of_two_block", "self_taught_targets' tree reduction with a block of 96", "kernels/self_taught_targets_cuda.cu",
        "constexpr int kThreads = 128;", "constexpr int kThreads = 96;"),
    Bug("host_sync_in_check", "roi_align_avg's host check reads a device value (the check before this fix, .item())",
        "csrc/ops/roi_align_avg.cpp",
        '                      "`spatial_scale` must be a positive finite number, got ", spatial_scale);\n}\n',
        '                      "`spatial_scale` must be a positive finite number, got ", spatial_scale);\n'
        "  if (rois.numel() == 0) return;\n"
        "  const at::Tensor scaled = rois.narrow(1, 1, 4).to(at::toOpMathType(rois.scalar_type())) * spatial_scale;\n"
        "  const at::Tensor finite = at::isfinite(rois).all().logical_and_(at::isfinite(scaled).all());\n"
        "  RELGROUND_CHECK_ARG(finite.item<bool>(), op, \"`rois` contains NaN or infinite values\");\n}\n"),
]


def _sanitizer_env(kind: str) -> dict:
    def lib(name):
        return subprocess.run(["g++", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()

    if kind == "address":
        return {"LD_PRELOAD": f"{lib('libasan.so')} {lib('libstdc++.so.6')}", "ASAN_OPTIONS": "detect_leaks=0"}
    return {"LD_PRELOAD": lib("libtsan.so"), "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}


# The detectors: (name, sanitizer, extra environment, pytest selection).
DETECTORS = {
    "tests": (None, {}, ["tests/cudasim"]),
    "asan": ("address", {}, ["tests/cudasim"]),
    "tsan": ("thread", {"CUDASIM_CONCURRENT_BLOCKS": "4"},
             ["tests/cudasim/test_kernels_on_cpu.py", "-k", "not self_taught_targets"]),
}


def run_detector(name: str, override: str, out_dir: str) -> tuple[bool, str]:
    """Builds the mutant for the detector and runs it; returns (caught, first line of the report)."""
    sanitize, extra_env, selection = DETECTORS[name]
    lib = build_cudasim.build(sanitize=sanitize, override=override, out=os.path.join(out_dir, name))
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "RELGROUND_CUDASIM_LIB": lib,
           "CUDASIM_TIMEOUT_S": "5", **extra_env}
    if sanitize:
        env.update(_sanitizer_env(sanitize))
    # --capture=sys: a sanitizer writes its report to file descriptor 2 and ends the process, which pytest's default
    # capture of the descriptors would swallow.
    cmd = [sys.executable, "-m", "pytest", *selection, "-x", "-q", "-p", "no:cacheprovider", "-W", "ignore",
           "--capture=sys"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return False, ""
    return True, first_report_line(output)


def first_report_line(output: str) -> str:
    for pattern in (r"ERROR: AddressSanitizer: [^\n]+", r"WARNING: ThreadSanitizer: [^\n]+\n[^\n]+",
                    r"cudasim: [^\n]+\n[^\n]+",
                    r"FAILED [^\n]+", r"E   [^\n]+"):
        match = re.search(pattern, output)
        if match:
            return " ".join(match.group(0).split())[:200]
    return output.strip().splitlines()[-1][:160] if output.strip() else "(no output)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, help="bug names (default: all)")
    parser.add_argument("--all-detectors", action="store_true", help="run every detector, not only until one fails")
    parser.add_argument("--detectors", nargs="*", default=list(DETECTORS), choices=list(DETECTORS),
                        help="the detectors to try, in order (default: tests asan tsan)")
    args = parser.parse_args(argv)
    bugs = [b for b in BUGS if not args.only or b.name in args.only]
    rows, missed = [], []
    for bug in bugs:
        start = time.time()
        source = open(os.path.join(ROOT, bug.path)).read()
        if source.count(bug.old) != 1:
            raise SystemExit(f"inject_kernel_bugs: {bug.name}: the text to replace is not found once in {bug.path}")
        out_dir = os.path.join(ROOT, "build", "cudasim", "mutants", bug.name)
        override = os.path.join(out_dir, "src")
        os.makedirs(override, exist_ok=True)
        with open(os.path.join(override, os.path.basename(bug.path)), "w") as f:
            f.write(source.replace(bug.old, bug.new))
        caught_by = []
        for detector in args.detectors:
            caught, report = run_detector(detector, override, out_dir)
            if caught:
                caught_by.append((detector, report))
                if not args.all_detectors:
                    break
        if not caught_by:
            missed.append(bug.name)
        detectors = ", ".join(d for d, _ in caught_by) or "NOT CAUGHT"
        report = caught_by[0][1].replace("|", "\\|") if caught_by else ""
        rows.append(f"| {bug.name} | {bug.what} | `{bug.path}` | {detectors} | {report} |")
        print(f"inject_kernel_bugs: {bug.name}: {detectors} ({time.time() - start:.0f} s)", flush=True)
    print("\n| bug | injected | file | caught by | first report |\n| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    if missed:
        print(f"\nNOT CAUGHT: {', '.join(missed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
