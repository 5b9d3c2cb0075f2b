"""The command line, and the demo run end to end on a real etcd."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from click.testing import CliRunner

from etcdroute import ServerDriver
from etcdroute.cli import main

Factory = Callable[..., ServerDriver]


def test_demo_runs_and_passes(etcd_endpoints: str) -> None:
    """The main job, as a user runs it, in a separate process."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "etcdroute.cli",
            "demo",
            "--endpoints",
            etcd_endpoints,
            "--uids",
            "300",
            "--ttl",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERDICT: PASS" in done.stdout
    assert "vanished" in done.stdout and "drained pod 2" in done.stdout


def test_pods_and_links_commands(
    make_driver: Factory, etcd_endpoints: str, namespace: str
) -> None:
    pod = make_driver(4, address="10.1.1.4:7000")
    pod.try_set_linked_pod("room/1")
    runner = CliRunner()

    listed = runner.invoke(
        main,
        [
            "pods",
            "--endpoints",
            etcd_endpoints,
            "--namespace",
            namespace,
            "--service",
            "game",
            "--json",
        ],
    )
    assert listed.exit_code == 0, listed.output
    row = json.loads(listed.output.strip())
    assert (row["pod"], row["address"], row["routing_state"]) == (
        4,
        "10.1.1.4:7000",
        "accepting",
    )

    links = runner.invoke(
        main,
        [
            "links",
            "--endpoints",
            etcd_endpoints,
            "--namespace",
            namespace,
            "--service",
            "game",
        ],
    )
    assert links.exit_code == 0, links.output
    assert json.loads(links.output.strip())["uid"] == "room/1"


def test_bad_namespace_is_a_usage_error(etcd_endpoints: str) -> None:
    result = CliRunner().invoke(
        main,
        [
            "pods",
            "--endpoints",
            etcd_endpoints,
            "--namespace",
            "../x",
            "--service",
            "game",
        ],
    )
    assert result.exit_code == 2
    assert "namespace" in result.output


def test_unreachable_etcd_exit_code() -> None:
    result = CliRunner().invoke(
        main,
        [
            "pods",
            "--endpoints",
            "127.0.0.1:1",
            "--timeout",
            "1",
            "--namespace",
            "ns",
            "--service",
            "game",
        ],
    )
    assert result.exit_code == 3
    assert "etcd" in result.output
