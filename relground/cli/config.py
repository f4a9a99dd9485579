"""``relground config show``: print the merged config (the file, its ``_base_`` files, the defaults, ``--set``).

Examples:
    relground config show --config configs/flickr30k_reir.yaml
    relground config show --config flickr30k_reir.yaml --set SOLVER.BASE_LR=2e-3 data.root=/data/flickr30k

The output is YAML that ``relground train --config`` reads back unchanged; every key is listed, defaults included.
Everything is checked as training checks it (unknown keys, types, ranges), before anything is printed.
"""
from __future__ import annotations

from relground.cli.common import HELP_FORMATTER, add_override_argument, command_description
from relground.config.loader import dump_config, load_config


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="print the merged config (YAML)", description=command_description(__doc__),
                              formatter_class=HELP_FORMATTER)
    sub = p.add_subparsers(dest="config_command", metavar="CONFIG_COMMAND", required=True)
    show = sub.add_parser("show", help="print the merged config as YAML", description=command_description(__doc__),
                          formatter_class=HELP_FORMATTER)
    show.add_argument("--config", required=True, help="YAML file or a shipped config name (flickr30k_reir.yaml, ...)")
    add_override_argument(show)
    show.set_defaults(func=run_show)


def run_show(args) -> int:
    cfg = load_config(args.config, args.overrides)
    print(dump_config(cfg), end="")
    return 0
