"""Command-line entry points. Thin: parse arguments, build a config, call into the package."""
