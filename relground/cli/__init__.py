"""Command-line entry points. Thin: parse arguments, build a config, call into the package."""

__all__: list[str] = []  # entry points, not an API: ``relground`` on the command line (relground.cli.main:main)
