"""``relground info``: build facts of the native extension and the environment."""
from __future__ import annotations

import json

import torch

import relground
from relground.cli.common import HELP_FORMATTER, command_description


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print how relground._C was built (JSON)",
                              description=command_description(__doc__), formatter_class=HELP_FORMATTER)
    p.set_defaults(func=run)


def run(args) -> int:
    info = {"relground": relground.__version__, "has_ops": relground.HAS_OPS, "torch_runtime": torch.__version__}
    if relground.HAS_OPS:
        info.update(relground.build_info())
    info["cuda_available"] = torch.cuda.is_available()
    print(json.dumps(info, indent=2))
    return 0
