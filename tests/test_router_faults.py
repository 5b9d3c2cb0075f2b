"""Faults the router must survive, each on its own embedded etcd.

FR08 (etcd restart), FR09 (refused watch), FR10 (paused etcd, staleness
bound) and FR17 (the member in use dies, 3 members). These tests kill,
pause and reconfigure etcd, so none of them uses the shared session etcd.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
from polling import wait_until

from etcdroute import (
    Credentials,
    DriverConfig,
    EmbeddedEtcd,
    EtcdStore,
    Keyspace,
    LinkTable,
    PermissionDeniedError,
    Router,
    RouterConfig,
    ServerDriver,
    Source,
    StoreError,
    WatchRefusedError,
)
from etcdroute.mirror import MirrorState
from etcdroute.models import decode_link

NS, SERVICE = "faults", "game"
KEYSPACE = Keyspace("etcdroute", NS)

#: Leases long enough to outlast every pause and restart here: these
#: tests are about the router, not about lease expiry.
SLOW_LEASE = DriverConfig(
    lease_ttl=30, state_interval=2.0, workload_interval=5.0, max_backoff=0.5
)
QUICK = RouterConfig(max_staleness=1.0, progress_interval=0.2, max_backoff=0.5)


def wait_store(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Wait for ``check``, counting etcd errors as "not yet"."""
    return wait_until(check, timeout, ignore=(StoreError,))


def etcd_links(store: EtcdStore) -> dict[str, tuple[int, int]]:
    kvs, _ = store.get_prefix(KEYSPACE.links_prefix(SERVICE))
    return {
        KEYSPACE.uid_from_link_key(SERVICE, kv.key): (
            decode_link(kv.key, kv.value)[0],
            kv.mod_revision,
        )
        for kv in kvs
    }


def cached(router: Router) -> dict[str, tuple[int, int]]:
    return {
        uid: (entry.pod_id, entry.revision)
        for uid, entry in router.cached().items()
    }


def relink(endpoints: str, uid: str, pod_id: int) -> int:
    """Force a link through a client of our own; returns its revision."""
    with EtcdStore(endpoints) as other:
        table = LinkTable(other, KEYSPACE)
        assert wait_store(lambda: bool(table.pods(SERVICE)[0]))
        return table.set(SERVICE, uid, pod_id).revision


def holds(router: Router, uid: str, revision: int) -> bool:
    entry = router.cached().get(uid)
    return entry is not None and entry.revision == revision


@pytest.fixture
def etcd() -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd(unsafe_no_fsync=True) as started:
        yield started


def start_pods(
    endpoints: str, count: int = 2, credentials: Credentials | None = None
) -> list[ServerDriver]:
    return [
        ServerDriver(
            endpoints,
            namespace=NS,
            service=SERVICE,
            pod_id=pod_id,
            address=f"pod-{pod_id}:1",
            config=SLOW_LEASE,
            credentials=credentials,
        ).start()
        for pod_id in range(count)
    ]


# ---------------------------------------------------------------- FR10


def test_paused_etcd_bounds_staleness(etcd: EmbeddedEtcd) -> None:
    pods = start_pods(etcd.endpoint_string)
    router = Router(
        etcd.endpoint_string,
        namespace=NS,
        service=SERVICE,
        config=QUICK,
        timeout=1.0,
    ).start()
    try:
        made = router.route("u1")
        assert router.sync()
        etcd.pause(0)
        try:
            # Within a loose bound the cache still answers...
            early = router.route("u1", max_staleness=60)
            assert early.source is Source.CACHE
            # ...but the proof of freshness ages, and past the bound the
            # cache is bypassed: the call then fails within its deadline.
            assert wait_store(lambda: router.staleness() > 1.0, 10)
            started = time.monotonic()
            with pytest.raises(StoreError):
                router.route("u1")
            assert time.monotonic() - started < 1.0 + 2.0
        finally:
            etcd.resume(0)

        # Back within seconds, from the cache, with nothing lost.
        def cached_again() -> bool:
            return router.route("u1").source is Source.CACHE

        assert wait_store(cached_again, 15)
        again = router.route("u1")
        assert (again.pod_id, again.link_revision) == (
            made.pod_id,
            made.link_revision,
        )
        assert router.state is MirrorState.LIVE
    finally:
        router.stop()
        for pod in pods:
            pod.stop()


# ---------------------------------------------------------------- FR08


@pytest.mark.parametrize(
    "cycles", [1, pytest.param(3, marks=pytest.mark.slow)]
)
def test_etcd_restart_rebuilds_the_watch(
    etcd: EmbeddedEtcd, cycles: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="etcdroute.mirror")
    pods = start_pods(etcd.endpoint_string)
    router = Router(
        etcd.endpoint_string, namespace=NS, service=SERVICE, config=QUICK
    ).start()
    try:
        router.route("warm")
        threads_before = threading.active_count()
        for cycle in range(cycles):
            etcd.kill(0)
            etcd.restart(0)
            # Another client changes a link once etcd is back.
            uid = f"after-{cycle}"
            revision = relink(etcd.endpoint_string, uid, cycle % 2)
            assert wait_store(partial(holds, router, uid, revision), 15)
            assert wait_store(lambda: router.state is MirrorState.LIVE)
        assert router.sync(10)
        with EtcdStore(etcd.endpoint_string) as check:
            assert cached(router) == etcd_links(check)
        lost = [r for r in caplog.records if "watch lost" in r.getMessage()]
        assert len(lost) >= cycles
        # Watch threads are replaced, not accumulated.
        assert wait_store(
            lambda: threading.active_count() <= threads_before + 1, 10
        )
    finally:
        router.stop()
        for pod in pods:
            pod.stop()


# ---------------------------------------------------------------- FR09

ROOT = Credentials(user="root", password="root-secret")
READER = Credentials(user="router", password="router-secret")


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[EmbeddedEtcd]:
    """An etcd with auth on; user ``router`` may read pods and loads."""
    with EmbeddedEtcd(unsafe_no_fsync=True) as started:
        ctl(started, "user", "add", "root", "--new-user-password=root-secret")
        ctl(started, "user", "grant-role", "root", "root")
        ctl(started, "role", "add", "reader")
        for kind in ("pods", "load"):
            grant(started, f"etcdroute/{NS}/{kind}/{SERVICE}/")
        ctl(
            started,
            "user",
            "add",
            "router",
            "--new-user-password=router-secret",
        )
        ctl(started, "user", "grant-role", "router", "reader")
        ctl(started, "auth", "enable")
        yield started


def ctl(etcd: EmbeddedEtcd, *args: str, root: bool = False) -> None:
    assert etcd.etcdctl is not None
    command = [etcd.etcdctl, "--endpoints", etcd.endpoint_string]
    if root:
        command += ["--user", "root:root-secret"]
    subprocess.run([*command, *args], check=True, capture_output=True)


def grant(etcd: EmbeddedEtcd, key: str, *, prefix: bool = True) -> None:
    flag = "--prefix=true" if prefix else "--prefix=false"
    ctl(
        etcd,
        "role",
        "grant-permission",
        "reader",
        "read",
        flag,
        key,
        root=True,
    )


def revoke(etcd: EmbeddedEtcd, key: str) -> None:
    ctl(
        etcd,
        "role",
        "revoke-permission",
        "reader",
        "--prefix=true",
        key,
        root=True,
    )


def test_refused_watch_fails_start_naming_the_prefix(
    auth_etcd: EmbeddedEtcd,
) -> None:
    links = KEYSPACE.links_prefix(SERVICE)
    threads_before = threading.active_count()

    # No permission at all on the links: the start-up list is refused.
    router = Router(
        auth_etcd.endpoint_string,
        namespace=NS,
        service=SERVICE,
        credentials=READER,
    )
    with pytest.raises(PermissionDeniedError) as denied:
        router.start()
    assert links in str(denied.value)

    # Permission lost between list and watch: the watch itself is refused.
    grant(auth_etcd, links)
    router = Router(
        auth_etcd.endpoint_string,
        namespace=NS,
        service=SERVICE,
        credentials=READER,
        _on_listed=lambda revision: revoke(auth_etcd, links),
    )
    with pytest.raises(WatchRefusedError) as refused:
        router.start()
    assert refused.value.prefix.startswith(f"etcdroute/{NS}/")
    assert refused.value.prefix in str(refused.value)
    assert wait_store(lambda: threading.active_count() <= threads_before, 5)


def test_permission_lost_mid_run_degrades_then_recovers(
    auth_etcd: EmbeddedEtcd,
) -> None:
    links = KEYSPACE.links_prefix(SERVICE)
    pods = start_pods(auth_etcd.endpoint_string, credentials=ROOT)
    grant(auth_etcd, links)
    # The reader keeps one link key, so lookups have somewhere to go.
    grant(auth_etcd, KEYSPACE.link_key(SERVICE, "u1"), prefix=False)
    router = Router(
        auth_etcd.endpoint_string,
        namespace=NS,
        service=SERVICE,
        config=QUICK,
        credentials=READER,
    ).start()
    try:
        made = pods[0].try_set_linked_pod("u1", 1)
        assert router.sync()
        assert router.route("u1").source is Source.CACHE

        revoke(auth_etcd, links)
        router._mirror.drop_watch()  # any reconnect now meets the refusal
        assert wait_store(lambda: router.state is MirrorState.DEGRADED)
        bypassed = router.lookup("u1")
        assert bypassed is not None and bypassed.source is Source.ETCD
        assert bypassed.link_revision == made.revision

        grant(auth_etcd, links)
        assert wait_store(lambda: router.state is MirrorState.LIVE)
        assert wait_store(
            lambda: router.route("u1").source is Source.CACHE, 10
        )
    finally:
        router.stop()
        for pod in pods:
            pod.stop()


# ---------------------------------------------------------------- FR17


@pytest.mark.slow
def test_member_in_use_dies() -> None:
    with EmbeddedEtcd(members=3, unsafe_no_fsync=True) as etcd:
        pods = start_pods(etcd.endpoint_string)
        timeout = 2.0
        router = Router(
            etcd.endpoint_string,
            namespace=NS,
            service=SERVICE,
            config=QUICK,
            timeout=timeout,
        ).start()
        try:
            router.route("u1")
            assert router.sync()
            in_use = router._store.status().member_id
            index = next(
                i
                for i, member in enumerate(etcd.members)
                if EtcdStore(member.endpoint).status().member_id == in_use
            )
            etcd.kill(index)
            killed_at = time.monotonic()

            # Calls work again within twice the deadline.
            fresh = router.route("new-after-kill", consistency="linearizable")
            assert time.monotonic() - killed_at < 2 * timeout + 1.0
            assert fresh.source is Source.ETCD

            # A change by a client of another member reaches the cache.
            survivor = etcd.members[(index + 1) % 3].endpoint
            with EtcdStore(survivor) as other:
                made = LinkTable(other, KEYSPACE).set(SERVICE, "u1", 0)

            def seen() -> bool:
                entry = router.cached().get("u1")
                return entry is not None and entry.revision == made.revision

            assert wait_store(seen, 15)

            # The member comes back; nothing is duplicated or lost.
            etcd.restart(index)
            assert router.sync(10)
            with EtcdStore(survivor) as check:
                assert cached(router) == etcd_links(check)
        finally:
            router.stop()
            for pod in pods:
                pod.stop()
