"""The ``etcdroute`` command line.

Subcommands: ``demo`` (the main job), ``pods`` and ``links`` (inspect a
namespace), ``etcd`` (run an embedded etcd in the foreground). Every
command that talks to etcd takes ``--endpoints`` (or ``ETCDROUTE_ENDPOINTS``)
and the usual TLS / auth options; the password can come from
``ETCDROUTE_PASSWORD`` so it stays out of shell history. Exit codes:
0 success, 1 a check failed, 2 bad usage, 3 etcd unreachable or refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from etcdroute.bench.cli import bench
from etcdroute.check_command import check_command
from etcdroute.demo import DemoOptions, run_demo
from etcdroute.embedded import EmbeddedEtcd
from etcdroute.errors import EtcdRouteError, InvalidArgumentError, StoreError
from etcdroute.keys import Keyspace, check_name
from etcdroute.links import LinkTable
from etcdroute.store import Credentials, EtcdStore

EXIT_CHECK_FAILED = 1
EXIT_STORE = 3


def _configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def connection_options(function: Any) -> Any:
    """Options shared by every command that connects to etcd."""
    options = [
        click.option(
            "--endpoints",
            envvar="ETCDROUTE_ENDPOINTS",
            default="127.0.0.1:2379",
            show_default=True,
            help="Comma-separated host:port list of etcd members.",
        ),
        click.option(
            "--timeout",
            type=float,
            default=5.0,
            show_default=True,
            help="Deadline of every etcd call, in seconds.",
        ),
        click.option(
            "--user",
            envvar="ETCDROUTE_USER",
            default=None,
            help="etcd user name.",
        ),
        click.option(
            "--password",
            envvar="ETCDROUTE_PASSWORD",
            default=None,
            help="etcd password (prefer ETCDROUTE_PASSWORD).",
        ),
        click.option("--cacert", default=None, help="CA certificate (TLS)."),
        click.option("--cert", default=None, help="Client certificate."),
        click.option("--key", default=None, help="Client key."),
        click.option(
            "--prefix",
            default="etcdroute",
            show_default=True,
            help="Root prefix of etcdroute's keys.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _open_store(params: dict[str, Any]) -> EtcdStore:
    credentials = Credentials(
        user=params.pop("user"),
        password=params.pop("password"),
        ca_cert=params.pop("cacert"),
        cert_cert=params.pop("cert"),
        cert_key=params.pop("key"),
    )
    return EtcdStore(
        params.pop("endpoints"),
        timeout=params.pop("timeout"),
        credentials=credentials,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", count=True, help="More log output (-vv: debug)."
)
@click.version_option(package_name="etcdroute")
def main(verbose: int) -> None:
    """Strongly consistent stateful routing (uid -> pod) on etcd."""
    _configure_logging(verbose)


@main.command()
@click.option(
    "--endpoints",
    default=None,
    help="Use this etcd instead of starting an embedded one.",
)
@click.option(
    "--pods", type=click.IntRange(3, 64), default=4, show_default=True
)
@click.option(
    "--uids",
    type=click.IntRange(10, 1_000_000),
    default=2000,
    show_default=True,
)
@click.option(
    "--callers", type=click.IntRange(2, 256), default=8, show_default=True
)
@click.option(
    "--ttl",
    type=click.IntRange(2, 60),
    default=3,
    show_default=True,
    help="Lease TTL of the demo pods, in seconds.",
)
@click.option("--seed", type=int, default=7, show_default=True)
def demo(
    endpoints: str | None,
    pods: int,
    uids: int,
    callers: int,
    ttl: int,
    seed: int,
) -> None:
    """Run pods and callers against etcd, crash one, drain one, verify."""
    options = DemoOptions(endpoints, pods, uids, callers, ttl, seed)

    # SIGTERM must run the same clean-up as Ctrl-C: stop the pods and the
    # embedded etcd instead of orphaning them.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with _command():
        ok = run_demo(options)
    sys.exit(0 if ok else EXIT_CHECK_FAILED)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@main.command()
@click.option("--namespace", required=True)
@click.option("--service", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@connection_options
def pods(namespace: str, service: str, as_json: bool, **params: Any) -> None:
    """List the registered pods of a service with load and state."""
    with _command(), _open_store(params) as store:
        table = LinkTable(store, Keyspace(params["prefix"], namespace))
        found, revision = table.pods(check_name("service", service))
        if as_json:
            for pod in found:
                click.echo(
                    json.dumps(
                        {
                            "pod": pod.pod_id,
                            "address": pod.address,
                            "routing_state": pod.routing_state.value,
                            "load": pod.load,
                            "workload": pod.workload,
                            "epoch": pod.epoch,
                            "revision": revision,
                        }
                    )
                )
            return
        view = Table(title=f"{namespace}/{service} at revision {revision}")
        for column in (
            "pod",
            "address",
            "routing state",
            "load",
            "workload",
            "epoch",
        ):
            view.add_column(column)
        for pod in found:
            view.add_row(
                str(pod.pod_id),
                pod.address,
                pod.routing_state.value,
                str(pod.load),
                str(pod.workload),
                str(pod.epoch),
            )
        Console().print(view)


@main.command()
@click.option("--namespace", required=True)
@click.option("--service", required=True)
@click.option(
    "--pod",
    "pod_id",
    type=click.IntRange(0),
    default=None,
    help="Only links to this pod.",
)
@click.option(
    "--limit", type=click.IntRange(1), default=100, show_default=True
)
@connection_options
def links(
    namespace: str, service: str, pod_id: int | None, limit: int, **params: Any
) -> None:
    """Print links as JSON lines: uid, pod, epoch, revision."""
    with _command(), _open_store(params) as store:
        table = LinkTable(store, Keyspace(params["prefix"], namespace))
        found, _ = table.links(check_name("service", service))
        if pod_id is not None:
            found = [link for link in found if link.pod_id == pod_id]
        for link in found[:limit]:
            record = {
                "uid": link.uid,
                "pod": link.pod_id,
                "epoch": link.epoch,
                "revision": link.revision,
            }
            click.echo(json.dumps(record))


@main.command(name="etcd")
@click.option(
    "--members", type=click.IntRange(1, 7), default=1, show_default=True
)
@click.option("--etcd-binary", default=None, help="Path of the etcd binary.")
def etcd_command(members: int, etcd_binary: str | None) -> None:
    """Run an embedded etcd in the foreground until Ctrl-C."""
    with _command():
        cluster = EmbeddedEtcd(members, binary=etcd_binary).start()
    with cluster:
        click.echo(
            f"etcd {cluster.version} serving at {cluster.endpoint_string}"
        )
        click.echo(f"data and logs in {cluster.root}; Ctrl-C stops it")
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


@contextlib.contextmanager
def _command() -> Iterator[None]:
    """Turn library errors into clean CLI exits (no tracebacks)."""
    try:
        yield
    except InvalidArgumentError as exc:
        raise click.UsageError(str(exc)) from exc
    except StoreError as exc:
        click.echo(f"Error: etcd: {exc}", err=True)
        sys.exit(EXIT_STORE)
    except EtcdRouteError as exc:
        raise click.ClickException(str(exc)) from exc


main.add_command(check_command)

main.add_command(bench)

if __name__ == "__main__":
    main()
