"""pytest setup of the benchmarks: importable checkout, the CUDA skip of tests/, and a speedup table.

Each benchmark sets ``benchmark.group`` to its case and ``extra_info["baseline"]`` to True for the
reference implementation; the summary divides the baseline's median by every other median in the group.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ has no package: import the checkout

from tests.conftest import pytest_collection_modifyitems  # noqa: E402,F401  (skips needs_cuda without a GPU)


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    benchmarks = [b for b in getattr(session, "benchmarks", []) if b.stats is not None]
    if not benchmarks:
        return
    terminalreporter.section("speedup over the baseline (median time, same run)")
    for group in sorted({b.group for b in benchmarks}):
        members = [b for b in benchmarks if b.group == group]
        baselines = [b for b in members if b.extra_info.get("baseline")]
        if len(baselines) != 1:
            continue
        base = baselines[0].stats.median
        for b in members:
            if b is not baselines[0]:
                terminalreporter.write_line(
                    f"{group:<32} {b.name:<60} {base * 1e3:9.3f} ms -> {b.stats.median * 1e3:9.3f} ms "
                    f"= {base / b.stats.median:6.2f}x"
                )
