"""G1, G2 and G4 on a real etcd, under real thread contention."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from etcdroute import (
    EtcdStore,
    LinkResult,
    PodError,
    PodNotAcceptingError,
    PodNotRegisteredError,
    RoutingState,
    ServerDriver,
)
from etcdroute.keys import Keyspace
from etcdroute.links import LinkTable

Factory = Callable[..., ServerDriver]


def race(threads: int, work: Callable[[int], LinkResult]) -> list[LinkResult]:
    """Run ``work(i)`` on ``threads`` threads released at the same instant."""
    barrier = threading.Barrier(threads)
    results: list[LinkResult | BaseException] = [None] * threads  # type: ignore[list-item]

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as exc:  # reported below
            results[index] = exc

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results  # type: ignore[return-value]


@pytest.mark.parametrize("round_", range(5))
def test_g1_g2_sixteen_threads_one_uid(
    make_driver: Factory, etcd_endpoints: str, namespace: str, round_: int
) -> None:
    pods = [make_driver(pod_id) for pod_id in range(1, 5)]
    uid = f"contended-{round_}"

    # Each thread has its own connection and aims at its own pod.
    stores = [EtcdStore(etcd_endpoints) for _ in range(16)]
    keyspace = Keyspace("etcdroute", namespace)
    try:
        results = race(
            16,
            lambda i: LinkTable(stores[i], keyspace).try_set(
                "game", uid, pods[i % 4].pod_id
            ),
        )
    finally:
        for opened in stores:
            opened.close()

    winners = {r.pod_id for r in results}
    created = [r for r in results if r.created]
    assert len(winners) == 1, f"G2: threads disagree: {winners}"
    assert len(created) == 1, f"G2: {len(created)} creators"
    assert {r.revision for r in results} == {created[0].revision}
    link = pods[0].get_linked_pod(uid)
    assert link is not None and link.pod_id == created[0].pod_id
    assert link.revision == created[0].revision


def test_g1_many_uids_each_single_owner(
    make_driver: Factory, store: EtcdStore, namespace: str
) -> None:
    pods = [make_driver(pod_id) for pod_id in range(1, 4)]
    uids = [f"u{i}" for i in range(40)]
    table = LinkTable(store, Keyspace("etcdroute", namespace))
    seen: dict[str, set[int]] = {uid: set() for uid in uids}
    lock = threading.Lock()

    def work(index: int) -> LinkResult:
        last = None
        for uid in uids:
            last = table.try_set("game", uid, pods[index % 3].pod_id)
            with lock:
                seen[uid].add(last.pod_id)
        assert last is not None
        return last

    race(12, work)
    for uid in uids:
        link = table.get("game", uid)
        assert link is not None
        assert seen[uid] == {link.pod_id}


def test_g4_no_link_to_draining_pod_while_racing(
    make_driver: Factory, store: EtcdStore, namespace: str
) -> None:
    """Links made concurrently with a drain are all older than the drain."""
    pod1, pod2 = make_driver(1), make_driver(2)
    table = LinkTable(store, Keyspace("etcdroute", namespace))
    made: list[LinkResult] = []
    stop = threading.Event()

    def claimer() -> None:
        index = 0
        while not stop.is_set():
            index += 1
            try:
                made.append(table.try_set("game", f"d{index}", 2))
            except PodNotAcceptingError:
                return

    thread = threading.Thread(target=claimer)
    thread.start()
    time.sleep(0.3)
    pod2.set_routing_state(RoutingState.DRAINING)
    drained_at = pod2.session.registration.revision  # type: ignore[union-attr]
    thread.join(timeout=10)
    stop.set()

    assert made, "the claimer made no link before the drain"
    assert all(r.revision < drained_at for r in made)
    with pytest.raises(PodNotAcceptingError):
        pod1.try_set_linked_pod("after-drain", 2)


def test_g4_no_link_to_unregistered_pod(make_driver: Factory) -> None:
    pod1, pod2 = make_driver(1), make_driver(2)
    pod2.stop()
    with pytest.raises(PodNotRegisteredError):
        pod1.try_set_linked_pod("u1", 2)
    assert pod1.get_linked_pod("u1") is None


def test_g4_crashed_pods_links_vanish_after_ttl(
    etcd_endpoints: str, namespace: str, make_driver: Factory
) -> None:
    """A pod process killed with SIGKILL: its links go with its lease."""
    ttl = 2
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "etcdroute.demo_pod",
            "--endpoints",
            etcd_endpoints,
            "--namespace",
            namespace,
            "--service",
            "game",
            "--pod-id",
            "5",
            "--ttl",
            str(ttl),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().startswith("ready")
        observer = make_driver(1)
        for uid in ("c1", "c2", "c3"):
            observer.try_set_linked_pod(uid, 5)
        child.kill()
        child.wait()
        killed_at = time.monotonic()

        # Still there right after the crash: nothing assumed gone early.
        assert observer.get_linked_pod("c1") is not None
        while observer.get_linked_pod("c1") is not None:
            assert time.monotonic() - killed_at < ttl + 5, "links outlived TTL"
            time.sleep(0.1)
        assert observer.linked_uids(5) == []
        assert 5 not in [p.pod_id for p in observer.pods()]

        # The uids can now be claimed by a live pod.
        assert observer.try_set_linked_pod("c1").pod_id == 1
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def test_claims_fail_over_to_live_pods(make_driver: Factory) -> None:
    """A caller aiming at a dead pod gets a clear PodError, not a link."""
    pod1, pod2 = make_driver(1), make_driver(2)
    pod2.stop()
    with pytest.raises(PodError):
        pod1.try_set_linked_pod("u1", 2)
    assert pod1.try_set_linked_pod("u1", 1).created
