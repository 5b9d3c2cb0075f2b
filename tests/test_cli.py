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


def test_user_errors_exit_cleanly(tmp_path: object) -> None:
    runner = CliRunner()
    cases = [
        (["demo", "--endpoints", "nohost"], 2, "endpoints"),
        (["demo", "--endpoints", "127.0.0.1:1"], 3, "etcd"),
        (
            [
                "pods",
                "--namespace",
                "n",
                "--service",
                "s",
                "--cacert",
                "/nonexistent/ca.pem",
            ],
            2,
            "ca_cert",
        ),
        (["etcd", "--etcd-binary", "/nonexistent/etcd"], 1, "etcd"),
        (
            ["links", "--namespace", "n", "--service", "s", "--pod", "-1"],
            2,
            "pod",
        ),
    ]
    for args, code, word in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == code, (args, result.output)
        assert word in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_sigterm_stops_demo_and_its_etcd() -> None:
    import re
    import signal
    import socket
    import time

    with subprocess.Popen(
        [sys.executable, "-m", "etcdroute.cli", "demo", "--ttl", "2"],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        port = None
        for line in child.stdout:
            found = re.search(r"embedded etcd \S+ at 127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
            if "pod processes" in line:
                break
        assert port is not None
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 128 + signal.SIGTERM
        child.stdout.read()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.2)
    raise AssertionError("the demo's etcd still listens after SIGTERM")
