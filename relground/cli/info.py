"""``relground info``: build facts of the native extension and the environment."""
from __future__ import annotations

import json

import torch

import relground
from relground.cli.common import HELP_FORMATTER, command_description
from relground.ops._cuda_arch import describe, runs_on


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print how relground._C was built (JSON)",
                              description=command_description(__doc__), formatter_class=HELP_FORMATTER)
    p.set_defaults(func=run)


def run(args) -> int:
    info = {"relground": relground.__version__, "has_ops": relground.HAS_OPS, "torch_runtime": torch.__version__}
    if relground.HAS_OPS:
        info.update(relground.build_info())
        # The code in the build as nvcc names it, e.g. ["sm_80", "sm_90", "compute_90"].
        info["cuda_archs"] = describe(info["cuda_arch_list"]) if info.get("cuda_compiled") else []
    info["cuda_available"] = torch.cuda.is_available()
    if info["cuda_available"]:
        try:
            devices = []
            for index in range(torch.cuda.device_count()):
                capability = tuple(torch.cuda.get_device_capability(index))
                supported = bool(info.get("cuda_compiled")) and runs_on(info.get("cuda_arch_list", ""), capability)
                devices.append({"name": torch.cuda.get_device_name(index), "capability": "%d.%d" % capability,
                                "runs_relground_kernels": supported})
            info["cuda_devices"] = devices
        except Exception as exc:  # noqa: BLE001 - e.g. the card check of relground.extension: report it, do not die
            info["cuda_device_error"] = str(exc).split("\n\nCUDA call was originally invoked")[0]
    print(json.dumps(info, indent=2))
    return 0
