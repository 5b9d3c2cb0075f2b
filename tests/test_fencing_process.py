"""FR12 with a real process: a pod frozen by SIGSTOP past its TTL.

The pod runs in a child process. While it is frozen, its lease expires
and another pod takes its uid; woken up, its owner-guarded write must
fail with NotOwnerError and its local view must say "not owner".
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from etcdroute import EtcdStore, ServerDriver
from etcdroute.testing import pause_process, resume_process

pytestmark = pytest.mark.slow

CHILD = r"""
import sys
from etcdroute import DriverConfig, NotOwnerError, ServerDriver

endpoints, namespace = sys.argv[1], sys.argv[2]
config = DriverConfig(lease_ttl=2, state_interval=0.5, fencing_margin=0.3)
with ServerDriver(endpoints, namespace=namespace, service="game",
                  pod_id=1, config=config) as driver:
    result = driver.try_set_linked_pod("u1")
    print("ready", result.revision, flush=True)
    sys.stdin.readline()                       # parent: "go" after SIGCONT
    try:
        driver.ownership.fenced_write(
            "u1", driver.keyspace.root + "data/u1", b"stale")
        print("wrote", flush=True)
    except NotOwnerError as exc:
        print("refused", exc.owner, flush=True)
    print("owns", driver.ownership.owns("u1"), flush=True)
"""


def test_fr12_sigstopped_pod_wakes_up_not_owner(
    etcd_endpoints: str, namespace: str, store: EtcdStore
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, etcd_endpoints, namespace],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    other = None
    try:
        assert child.stdout is not None and child.stdin is not None
        ready = child.stdout.readline().split()
        assert ready[0] == "ready", ready

        pause_process(child.pid)
        pod_key = f"etcdroute/{namespace}/pods/game/0000000001"
        end = time.monotonic() + 15
        while store.get(pod_key)[0] is not None:
            assert time.monotonic() < end, "lease did not expire"
            time.sleep(0.1)
        other = ServerDriver(
            store, namespace=namespace, service="game", pod_id=2
        ).start()
        taken = other.try_set_linked_pod("u1")
        assert taken.created and taken.pod_id == 2

        resume_process(child.pid)
        child.stdin.write("go\n")
        child.stdin.flush()
        answers = [child.stdout.readline().split() for _ in range(2)]
        assert answers[0][0] == "refused", answers
        assert answers[1] == ["owns", "False"]
        assert store.get(f"etcdroute/{namespace}/data/u1")[0] is None
        assert child.wait(30) == 0
    finally:
        if child.poll() is None:
            resume_process(child.pid)
            child.kill()
            child.wait()
        if other is not None:
            other.stop()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
