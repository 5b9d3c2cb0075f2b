"""``etcdroute bench``: the contention benchmark on the command line.

Without ``--endpoints`` it starts an embedded etcd (fsync on, as in
production) and stops it at the end. ``--quick`` and ``--full`` run the
scenario sets of :mod:`etcdroute.bench.presets`; otherwise one scenario
is built from the workload options. Exit status: 0 when etcdroute showed
no violation and the naive variant was caught wherever there was
contention (speed never fails a run), 1 otherwise, 3 when etcd could not
be reached.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from etcdroute.bench import presets
from etcdroute.bench.capacity import measure_capacity
from etcdroute.bench.harness import BenchConfig, Harness, Scenario
from etcdroute.bench.report import (
    RichProgress,
    document,
    environment,
    plot,
    print_tables,
    write_json,
)
from etcdroute.bench.runner import BenchError
from etcdroute.bench.workload import DEFAULT_MIX, DISTRIBUTIONS, Workload
from etcdroute.bench.workload import parse_mix as _parse_mix
from etcdroute.embedded import EmbeddedEtcd
from etcdroute.errors import InvalidArgumentError, StoreError
from etcdroute.store import EtcdStore, parse_endpoints

logger = logging.getLogger(__name__)

EXIT_CHECK_FAILED = 1
EXIT_STORE = 3

_DEFAULT_OUTPUT = "benchmarks/results/tmp/bench.json"


@click.command(name="bench")
@click.option(
    "--endpoints",
    default=None,
    help="Benchmark this etcd instead of an embedded one.",
)
@click.option(
    "--quick", is_flag=True, help="The CI set: two scenarios, about a minute."
)
@click.option(
    "--full",
    is_flag=True,
    help="The recorded set: concurrency and skew sweeps, capacity model.",
)
@click.option(
    "--together",
    is_flag=True,
    help="Run the variants at the same time (head to head) instead of "
    "in turn.",
)
@click.option(
    "--variants", default="etcdroute,raw,lock,naive", show_default=True
)
@click.option(
    "--distribution",
    type=click.Choice(DISTRIBUTIONS),
    default="hotkey",
    show_default=True,
)
@click.option(
    "--keys", type=click.IntRange(1), default=1000, show_default=True
)
@click.option(
    "--skew",
    type=float,
    default=0.99,
    show_default=True,
    help="Zipfian skew, in [0, 1).",
)
@click.option(
    "--hot-keys", type=click.IntRange(1), default=8, show_default=True
)
@click.option("--hot-fraction", type=float, default=0.9, show_default=True)
@click.option(
    "--mix",
    default=None,
    help="Operation weights, e.g. try_set=70,get=30 (default "
    + ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items())
    + ").",
)
@click.option(
    "--processes", type=click.IntRange(1, 64), default=2, show_default=True
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=4,
    show_default=True,
    help="Threads per process.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="Seconds per run (0: use --ops).",
)
@click.option(
    "--ops",
    type=click.IntRange(0),
    default=0,
    help="Operations per thread (0: use --duration).",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 20),
    default=None,
    help="Rounds per scenario [quick 1, full 2, else 1].",
)
@click.option(
    "--pods", type=click.IntRange(1, 64), default=4, show_default=True
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--capacity-links",
    type=click.IntRange(0),
    default=None,
    help="Links of the capacity model [full 100000, else 0].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, max=3600, min_open=True),
    default=5.0,
    show_default=True,
    help="Deadline of every etcd call, in seconds.",
)
@click.option(
    "--output",
    default=_DEFAULT_OUTPUT,
    show_default=True,
    help="JSON record of the run.",
)
@click.option(
    "--plot",
    "plot_path",
    default=None,
    help="PNG plot [next to --output when sweeps ran].",
)
@click.option(
    "--history-dir",
    default=None,
    help="Where histories go [<output>-histories].",
)
def bench(**options: Any) -> None:
    """Compare etcdroute, raw txn, lock-per-uid and naive under contention."""
    if options["quick"] and options["full"]:
        raise click.UsageError("--quick and --full exclude each other")
    try:
        scenarios = _scenarios(options)
        variants = tuple(
            v.strip() for v in options["variants"].split(",") if v.strip()
        )
        output = Path(options["output"])
        history_dir = options["history_dir"] or str(
            output.with_name(output.stem + "-histories")
        )
        repeat = options["repeat"] or (3 if options["full"] else 1)
        if options["endpoints"] is not None:
            parse_endpoints(options["endpoints"])
        config = BenchConfig(
            scenarios,
            history_dir=history_dir,
            variants=variants,
            pods=options["pods"],
            repeat=repeat,
            timeout=options["timeout"],
        )
    except InvalidArgumentError as exc:
        raise click.UsageError(str(exc)) from exc
    capacity_links = options["capacity_links"]
    if capacity_links is None:
        capacity_links = 100_000 if options["full"] else 0

    # Refuse an unwritable output before any etcd is started.
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.UsageError(
            f"--output {output}: cannot create its folder: {exc.strerror}"
        ) from exc

    try:
        ok = _run(options, config, capacity_links, output)
    except InvalidArgumentError as exc:
        raise click.UsageError(str(exc)) from exc
    except (StoreError, BenchError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_STORE)
    sys.exit(0 if ok else EXIT_CHECK_FAILED)


def _scenarios(options: dict[str, Any]) -> tuple[Scenario, ...]:
    if options["quick"]:
        return presets.quick(options["seed"])
    if options["full"]:
        return presets.full(options["seed"])
    mix = _parse_mix(options["mix"]) if options["mix"] else dict(DEFAULT_MIX)
    workload = Workload(
        options["distribution"],
        keys=options["keys"],
        skew=options["skew"],
        hot_keys=min(options["hot_keys"], options["keys"]),
        hot_fraction=options["hot_fraction"],
        mix=mix,
        seed=options["seed"],
    )
    name = f"{workload.label}-{options['processes']}x{options['threads']}"
    return (
        Scenario(
            name,
            workload,
            options["processes"],
            options["threads"],
            options["duration"],
            options["ops"],
            together=options["together"],
        ),
    )


def _run(
    options: dict[str, Any],
    config: BenchConfig,
    capacity_links: int,
    output: Path,
) -> bool:
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))
    embedded = None
    endpoints = options["endpoints"]
    if endpoints is None:
        embedded = EmbeddedEtcd().start()
        endpoints = embedded.endpoint_string
        console.print(f"embedded etcd {embedded.version} at {endpoints}")
    try:
        with EtcdStore(endpoints, timeout=options["timeout"]) as store:
            env = environment(
                store, embedded.binary if embedded is not None else None
            )
            progress = RichProgress(console)
            harness = Harness(store, endpoints, config, progress=progress)
            try:
                results = harness.run()
            finally:
                progress.close()
        capacity = None
        if capacity_links:
            console.print(f"capacity model: creating {capacity_links} links")
            capacity = measure_capacity(endpoints, capacity_links)
    finally:
        if embedded is not None:
            embedded.stop()

    settings = {
        "preset": "quick"
        if options["quick"]
        else "full"
        if options["full"]
        else "custom",
        "variants": list(config.variants),
        "pods": config.pods,
        "repeat": config.repeat,
        "seed": options["seed"],
        "endpoints": "embedded" if embedded is not None else endpoints,
        "history_dir": config.history_dir,
    }
    record = document(results, env, settings, capacity)
    write_json(record, output)
    print_tables(record, console)
    plot_path = options["plot_path"] or str(output.with_suffix(".png"))
    if plot(record, plot_path):
        console.print(f"plot: {plot_path}")
    console.print(f"record: {output}; histories: {config.history_dir}")
    ok: bool = record["ok"]
    return ok
