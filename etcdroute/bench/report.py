"""Show and keep a benchmark's figures: terminal, JSON, PNG.

The JSON document is the record: every run's figures, the aggregate per
variant and scenario, the ratios, the capacity model, the environment
(etcd version, CPU count, load, client versions) and the verdict. The
table and the plot are both drawn from that document, so a plot can be
redrawn from a stored file (``benchmarks/bench_contention.py --replot``).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from etcdroute.bench.harness import (
    ScenarioResult,
    aggregate,
    failures,
    ratios,
)
from etcdroute.store import EtcdStore

logger = logging.getLogger(__name__)

_PACKAGES = ("etcdroute", "python3-etcd3", "grpcio", "protobuf")


class RichProgress:
    """One live progress bar per run, a result line when each run ends."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[ops]} ops"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._task: Any = None

    def begin(self, label: str, duration: float) -> None:
        if self._task is None:
            self._bar.start()
        else:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(label, total=duration, ops=0)

    def update(self, ops: int, elapsed: float) -> None:
        self._bar.update(self._task, completed=elapsed, ops=ops)

    def end(self, summary: str) -> None:
        self._bar.console.print(f"  {summary}")

    def close(self) -> None:
        """Remove the bar; call once every run has ended."""
        self._bar.stop()


def environment(
    store: EtcdStore, etcd_binary: str | None = None
) -> dict[str, Any]:
    """Where the figures were measured."""
    versions: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    status = store.status()
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "etcd_version": status.version,
        "etcd_binary": etcd_binary,
        "etcd_embedded": etcd_binary is not None,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def document(
    results: list[ScenarioResult],
    env: dict[str, Any],
    settings: dict[str, Any],
    capacity: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON record of a benchmark run."""
    scenarios = []
    for result in results:
        scenario = result.scenario
        variants = sorted({run["variant"] for run in result.runs})
        scenarios.append(
            {
                "name": scenario.name,
                "processes": scenario.processes,
                "threads": scenario.threads,
                "callers": scenario.callers,
                "duration_s": scenario.duration,
                "contention": scenario.contention,
                "together": scenario.together,
                "sweeps": list(scenario.sweeps),
                "workload": asdict(scenario.workload),
                "label": scenario.workload.label,
                "variants": {v: aggregate(result, v) for v in variants},
                "ratios": ratios(result),
                "runs": result.runs,
            }
        )
    problems = failures(results)
    return {
        "format": "etcdroute-bench",
        "version": 1,
        "environment": env,
        "settings": settings,
        "scenarios": scenarios,
        "capacity": capacity,
        "failures": problems,
        "ok": not problems,
    }


def write_json(record: dict[str, Any], path: str | Path) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def print_tables(record: dict[str, Any], console: Console) -> None:
    """One table per scenario, then the capacity model and the verdict."""
    for scenario in record["scenarios"]:
        title = (
            f"{scenario['name']}: {scenario['label']}, "
            f"{scenario['processes']} proc x {scenario['threads']} threads"
        )
        ratio_text = ", ".join(
            f"{name} = {_ratio(value)}"
            for name, value in scenario["ratios"].items()
        )
        table = Table(title=title, caption=ratio_text)
        for column in (
            "variant",
            "ops/s",
            "try_set/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "conflicts",
            "retries",
            "errors",
            "cpu us/op",
            "leases+",
            "verdict",
        ):
            table.add_column(column, justify="right", no_wrap=True)
        for name, figures in scenario["variants"].items():
            table.add_row(
                name,
                f"{figures['throughput']:.0f}",
                f"{figures['try_set_throughput']:.0f}",
                f"{figures['p50_ms']:.2f}",
                f"{figures['p99_ms']:.2f}",
                f"{figures['p999_ms']:.2f}",
                str(figures["conflicts"]),
                str(figures["retries"]),
                str(figures["errors"]),
                f"{figures['client_cpu_us_per_op']:.0f}",
                str(max(0, figures["lease_peak_over_baseline"])),
                figures["verdict"],
            )
        console.print(table)
    capacity = record.get("capacity")
    if capacity:
        console.print(
            f"capacity: {capacity['bytes_per_link']:.0f} bytes of etcd "
            f"storage per link over {capacity['links']} links; "
            f"{capacity['links_per_gib']:,.0f} links per GiB; "
            f"{capacity['create_rate']:.0f} link creations/s"
        )
    if record["ok"]:
        console.print(
            "[green]verdict: passed (no etcdroute violation or lease leak; "
            "no naive run under contention went undetected)"
        )
    for problem in record["failures"]:
        console.print(f"[red]FAILED: {problem}")


def _skew_order(scenario: dict[str, Any]) -> tuple[int, float]:
    """Uniform first, then Zipfian by skew, hot keys last."""
    workload = scenario["workload"]
    rank = {"uniform": 0, "zipfian": 1, "hotkey": 2}[workload["distribution"]]
    skew = workload["skew"] if rank == 1 else 0.0
    return rank, float(skew)


def plot(record: dict[str, Any], path: str | Path) -> bool:
    """Throughput and p99 against concurrency and skew; False if no data."""
    sweeps = {
        "concurrency": [
            s for s in record["scenarios"] if "concurrency" in s["sweeps"]
        ],
        "skew": [s for s in record["scenarios"] if "skew" in s["sweeps"]],
    }
    if not any(sweeps.values()):
        return False
    import matplotlib  # optional: the bench extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for column, (sweep, scenarios) in enumerate(sweeps.items()):
        if sweep == "concurrency":
            scenarios = sorted(scenarios, key=lambda s: s["callers"])
            ticks = [f"{s['processes']}x{s['threads']}" for s in scenarios]
        else:
            scenarios = sorted(scenarios, key=_skew_order)
            ticks = [s["label"] for s in scenarios]
        positions = list(range(len(scenarios)))
        variants = sorted({v for s in scenarios for v in s["variants"]})
        for variant in variants:
            for row, figure_name in enumerate(("throughput", "p99_ms")):
                values = [
                    s["variants"].get(variant, {}).get(figure_name)
                    for s in scenarios
                ]
                axes[row][column].plot(
                    positions, values, marker="o", label=variant
                )
        for row, ylabel in enumerate(("ops/s (median)", "p99 latency (ms)")):
            axis = axes[row][column]
            axis.set_xticks(positions, ticks)
            axis.set_ylabel(ylabel)
            axis.grid(alpha=0.3)
            axis.set_xlabel(
                "processes x threads"
                if sweep == "concurrency"
                else "key distribution"
            )
        axes[1][column].set_yscale("log")
        axes[0][column].legend()
        axes[0][column].set_title(f"against {sweep}")
    env = record["environment"]
    figure.suptitle(
        f"etcd {env['etcd_version']}, {env['cpu_count']} CPUs, "
        f"{record['environment']['date']}"
    )
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def markdown(record: dict[str, Any]) -> str:
    """The record's tables in Markdown (for docs/benchmarks.md)."""
    lines = []
    for scenario in record["scenarios"]:
        lines.append(
            f"**{scenario['name']}** ({scenario['label']}, "
            f"{scenario['processes']} process(es) x {scenario['threads']} "
            f"threads, {scenario['duration_s']:g} s per run): "
            + ", ".join(
                f"{name} = {_ratio(value)}"
                for name, value in scenario["ratios"].items()
            )
        )
        lines.append("")
        lines.append(
            "| variant | ops/s | try_set/s | p50 ms | p99 ms | p999 ms "
            "| conflicts | retries | errors | client CPU us/op "
            "| leases over baseline | verdict |"
        )
        lines.append("|" + "---|" * 12)
        for name, f in scenario["variants"].items():
            lines.append(
                f"| {name} | {f['throughput']:.0f} "
                f"| {f['try_set_throughput']:.0f} | {f['p50_ms']:.2f} "
                f"| {f['p99_ms']:.2f} | {f['p999_ms']:.2f} "
                f"| {f['conflicts']} | {f['retries']} | {f['errors']} "
                f"| {f['client_cpu_us_per_op']:.0f} "
                f"| {max(0, f['lease_peak_over_baseline'])} "
                f"| {f['verdict']} |"
            )
        lines.append("")
    return "\n".join(lines)
