"""Experiments on the synthetic benchmark, out of the library proper: the demo and the paper's ablation tables.

* :mod:`~relground.experiments.synthetic`: generate the benchmark, configure a run (Table 2 presets), train + evaluate.
* :mod:`~relground.experiments.demo`: ``relground demo`` (full model vs baseline, figures, results table).
* :mod:`~relground.experiments.ablation`: ``relground ablation`` (Tables 2 and 3 over seeds, Markdown).

The command-line front ends (argument parsing and printing) are :mod:`relground.cli.demo` and
:mod:`relground.cli.ablation`.
"""

# The demo and ablation modules pull in the whole stack: they are public as submodules, imported when used.
__all__ = ["ablation", "demo", "synthetic"]
