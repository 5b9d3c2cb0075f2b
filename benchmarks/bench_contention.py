"""Contention benchmark: etcdroute against raw txn, lock-per-uid, naive.

A thin wrapper of ``etcdroute bench`` (same options), plus ``--replot
RECORD.json [PLOT.png]`` to redraw the plot of a stored record and
``--markdown RECORD.json`` to print its tables as Markdown. Examples::

    python benchmarks/bench_contention.py --quick
    python benchmarks/bench_contention.py --full \\
        --output benchmarks/results/full.json
    python benchmarks/bench_contention.py --replot benchmarks/results/full.json
    python benchmarks/bench_contention.py --markdown results/full.json

Results and their meaning: docs/benchmarks.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from etcdroute.bench.cli import bench
from etcdroute.bench.report import markdown, plot


def replot(record_path: str, plot_path: str | None = None) -> int:
    record = json.loads(Path(record_path).read_text())
    target = plot_path or str(Path(record_path).with_suffix(".png"))
    if not plot(record, target):
        print(f"{record_path}: no sweep to plot", file=sys.stderr)
        return 1
    print(f"plot: {target}")
    return 0


if __name__ == "__main__":
    # The guard matters: workers are spawned and import this module.
    if len(sys.argv) > 1 and sys.argv[1] == "--replot":
        sys.exit(replot(*sys.argv[2:4]))
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        print(markdown(json.loads(Path(sys.argv[2]).read_text())))
        sys.exit(0)
    bench(prog_name="bench_contention.py")
