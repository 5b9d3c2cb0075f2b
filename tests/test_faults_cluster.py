"""Faults of a 3-member etcd cluster on loopback during link contention.

Kill the leader, kill the member in use, pause a member, lose quorum,
restart the whole cluster, move the leader around. Throughout, pods run
``try_set_linked_pod`` on shared uids; every call is recorded and the
history is checked afterwards:

* no uid ever got two owners (all acknowledged answers for a uid name one
  pod: links are never removed here and no pod loses its lease);
* nothing acknowledged is lost (G5): every acknowledged link is in etcd
  at the end, naming the acknowledged pod;
* the pods kept their leases (FR17) where the fault allows it;
* errors are only etcdroute's documented ones and each call returned
  within its deadline.

Slow: each test starts nothing new but waits for elections and
reconnects; the module starts one cluster for all of them.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from polling import wait_until

from etcdroute import (
    DriverConfig,
    EmbeddedEtcd,
    EtcdRouteError,
    EtcdStore,
    ServerDriver,
    SessionState,
    StoreError,
)
from etcdroute.keys import Keyspace
from etcdroute.links import link_from_kv
from etcdroute.testing import etcdctl, move_leader, revoke_lease

pytestmark = pytest.mark.slow

CALL_TIMEOUT = 2.0
# TTL 5 s: a killed member is left at once (connection refused), a
# frozen one after two call deadlines (the store rotates its endpoints).
CONFIG = DriverConfig(
    lease_ttl=5,
    state_interval=1.0,
    workload_interval=5.0,
    fencing_margin=0.5,
    max_backoff=1.0,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd(3, unsafe_no_fsync=True) as etcd:
        yield etcd


@pytest.fixture
def healthy(cluster: EmbeddedEtcd) -> Iterator[EmbeddedEtcd]:
    """The cluster with every member running, before and after the test."""
    for index, member in enumerate(cluster.members):
        cluster.resume(index)
        if not member.running:
            cluster.restart(index)
    cluster.wait_ready()
    yield cluster
    for index, member in enumerate(cluster.members):
        cluster.resume(index)
        if not member.running:
            cluster.restart(index, wait=False)
    cluster.wait_ready()


@dataclass
class Call:
    uid: str
    pod: int
    started: float
    ended: float
    owner: int | None = None
    revision: int = 0
    error: str | None = None


@dataclass
class Contention:
    """Pods running try_set on shared uids from several threads."""

    drivers: list[ServerDriver]
    uids: list[str]
    calls: list[Call] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    unexpected: list[BaseException] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for driver in self.drivers:
            driver.add_listener(self._on_transition)
        self.threads = [
            threading.Thread(target=self._work, args=(driver, seed))
            for seed, driver in enumerate(self.drivers * 2)
        ]

    def _on_transition(self, transition: object) -> None:
        if getattr(transition, "new", None) is SessionState.LOST:
            self.lost.append(repr(transition))

    def start(self) -> Contention:
        for thread in self.threads:
            thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _work(self, driver: ServerDriver, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            uid = rng.choice(self.uids)
            call = Call(uid, driver.pod_id, time.monotonic(), 0.0)
            try:
                result = driver.try_set_linked_pod(uid)
                call.owner, call.revision = result.pod_id, result.revision
            except EtcdRouteError as exc:
                call.error = type(exc).__name__
            except BaseException as exc:  # not a documented error
                self.unexpected.append(exc)
            call.ended = time.monotonic()
            with self.lock:
                self.calls.append(call)
            time.sleep(0.01)

    # ---------------------------------------------------------- checks

    def acknowledged(self) -> dict[str, set[int]]:
        owners: dict[str, set[int]] = {}
        for call in self.calls:
            if call.owner is not None:
                owners.setdefault(call.uid, set()).add(call.owner)
        return owners

    def check(self, store: EtcdStore, keyspace: Keyspace) -> None:
        assert not self.unexpected, self.unexpected
        owners = self.acknowledged()
        assert owners, "no call succeeded at all"
        # G1/G2: one owner per uid across every acknowledged answer.
        assert all(len(pods) == 1 for pods in owners.values()), owners
        # G5: every acknowledged link is still in etcd, same owner.
        kvs, _ = store.get_prefix(keyspace.links_prefix("game"))
        stored = {
            keyspace.uid_from_link_key("game", kv.key): link_from_kv(
                "", kv
            ).pod_id
            for kv in kvs
        }
        for uid, pods in owners.items():
            assert stored.get(uid) == next(iter(pods)), uid
        # Every call returned within its deadline (plus scheduling slack;
        # a try_set may re-read once, hence two deadlines).
        slowest = max(call.ended - call.started for call in self.calls)
        assert slowest < 2 * CALL_TIMEOUT + 2, slowest

    def first_success_after(self, moment: float) -> float:
        done = [
            c.ended
            for c in self.calls
            if c.owner is not None and c.started >= moment
        ]
        assert done, "no call succeeded after the fault"
        return min(done) - moment


@pytest.fixture
def pods(
    healthy: EmbeddedEtcd,
) -> Iterator[Callable[[DriverConfig], tuple[list[ServerDriver], Keyspace]]]:
    made: list[ServerDriver] = []

    def factory(
        config: DriverConfig,
    ) -> tuple[list[ServerDriver], Keyspace]:
        namespace = f"f-{uuid.uuid4().hex[:10]}"
        for pod_id in range(3):
            driver = ServerDriver(
                healthy.endpoints,
                namespace=namespace,
                service="game",
                pod_id=pod_id,
                config=config,
                timeout=CALL_TIMEOUT,
            )
            made.append(driver.start())
        return made[-3:], Keyspace("etcdroute", namespace)

    yield factory
    for driver in made:
        driver.stop()


def _leader_away_from(cluster: EmbeddedEtcd, index: int) -> int:
    """Make sure member ``index`` is not the leader; return the leader."""
    leader = cluster.leader_index()
    if leader == index:
        move_leader(cluster, (index + 1) % 3)
        assert wait_until(
            lambda: cluster.leader_index() not in (None, index), 10
        )
        leader = cluster.leader_index()
    assert leader is not None
    return leader


def _check_pods_kept_leases(
    drivers: list[ServerDriver], leases: list[int], store: EtcdStore
) -> None:
    for driver, lease in zip(drivers, leases, strict=True):
        assert driver.lease_id == lease
        assert wait_until(
            lambda d=driver: d.state is SessionState.REGISTERED, 10
        )
        kv, _ = store.get(driver.keyspace.pod_key("game", driver.pod_id))
        assert kv is not None and kv.create_revision == driver.epoch


@pytest.mark.parametrize("victim", ["leader", "member-in-use"])
def test_fr17_kill_a_member_during_contention(
    healthy: EmbeddedEtcd,
    pods: Callable[[DriverConfig], tuple[list[ServerDriver], Keyspace]],
    victim: str,
) -> None:
    # pick_first connects every client to the first endpoint, member 0.
    leader = _leader_away_from(healthy, 0)
    index = leader if victim == "leader" else 0
    with EtcdStore(healthy.endpoints, timeout=5) as store:
        baseline = store.lease_count()
    drivers, keyspace = pods(CONFIG)
    leases = [d.lease_id for d in drivers]
    run = Contention(drivers, [f"u{i}" for i in range(40)]).start()
    time.sleep(2)

    healthy.kill(index)
    killed_at = time.monotonic()
    time.sleep(CONFIG.lease_ttl + 2)
    # Restarting the member duplicates nothing (checked below).
    healthy.restart(index)
    time.sleep(1)
    run.finish()

    with EtcdStore(healthy.endpoints, timeout=5) as store:
        run.check(store, keyspace)
        # Keepalives went through another member before the TTL ran out.
        assert run.lost == []
        _check_pods_kept_leases(drivers, leases, store)
        count, _ = store.count_prefix(keyspace.pods_prefix("game"))
        assert count == 3
        # One lease per pod, even through the fault (FR13).
        assert store.lease_count() == baseline + 3
    # Link calls resumed within twice the per-call deadline.
    assert run.first_success_after(killed_at) < 2 * CALL_TIMEOUT + 1


def test_pause_member_in_use_then_resume(
    healthy: EmbeddedEtcd,
    pods: Callable[[DriverConfig], tuple[list[ServerDriver], Keyspace]],
) -> None:
    _leader_away_from(healthy, 0)
    drivers, keyspace = pods(CONFIG)
    leases = [d.lease_id for d in drivers]
    run = Contention(drivers, [f"u{i}" for i in range(40)]).start()
    time.sleep(1)

    healthy.pause(0)
    paused_at = time.monotonic()
    # The store leaves the frozen member after two call deadlines.
    time.sleep(CONFIG.lease_ttl + 3)
    healthy.resume(0)
    time.sleep(2)
    run.finish()

    errors = {c.error for c in run.calls if c.error}
    assert errors <= {
        "StoreTimeoutError",
        "StoreUnavailableError",
        "LeaseLostError",  # refused locally near the deadline
    }
    with EtcdStore(healthy.endpoints, timeout=5) as store:
        run.check(store, keyspace)
        assert run.lost == []
        _check_pods_kept_leases(drivers, leases, store)
    assert run.first_success_after(paused_at) < 2 * CALL_TIMEOUT + 2


def test_quorum_lost_then_regained(
    healthy: EmbeddedEtcd,
    pods: Callable[[DriverConfig], tuple[list[ServerDriver], Keyspace]],
) -> None:
    drivers, keyspace = pods(CONFIG)
    run = Contention(drivers, [f"u{i}" for i in range(40)]).start()
    time.sleep(1)

    healthy.kill(1)
    healthy.kill(2)
    lost_at = time.monotonic()
    time.sleep(6)
    during = [c for c in run.calls if c.started > lost_at + 0.5]
    healthy.restart(1, wait=False)
    healthy.restart(2, wait=False)
    healthy.wait_ready()
    regained_at = time.monotonic()
    time.sleep(3)
    run.finish()

    # Without quorum calls fail, each within its deadline, with a
    # documented error; once a pod's local deadline passed, it refuses
    # to act as owner without asking etcd (LeaseLostError).
    failed = [c for c in during if c.error]
    assert failed
    assert {c.error for c in failed} <= {
        "StoreTimeoutError",
        "StoreUnavailableError",
        "LeaseLostError",
    }
    with EtcdStore(healthy.endpoints, timeout=5) as store:
        run.check(store, keyspace)
        # Nothing half-done: each pod has registration and load report on
        # one live lease, and every link is bound to a live pod's lease.
        registered = {}
        for driver in drivers:
            assert wait_until(lambda d=driver: d.lease_valid(), 15)
            pod, _ = store.get(keyspace.pod_key("game", driver.pod_id))
            load, _ = store.get(keyspace.load_key("game", driver.pod_id))
            assert pod is not None and load is not None
            assert pod.lease == load.lease == driver.lease_id
            registered[driver.pod_id] = driver.lease_id
        kvs, _ = store.get_prefix(keyspace.links_prefix("game"))
        for kv in kvs:
            assert kv.lease == registered[link_from_kv("", kv).pod_id]
    assert run.first_success_after(regained_at) < 2 * CALL_TIMEOUT + 2


def test_whole_cluster_restart_drivers_come_back(
    healthy: EmbeddedEtcd,
    pods: Callable[[DriverConfig], tuple[list[ServerDriver], Keyspace]],
) -> None:
    drivers, keyspace = pods(CONFIG)
    made = {
        f"u{i}": drivers[i % 3].try_set_linked_pod(f"u{i}") for i in range(20)
    }

    for index in range(3):
        healthy.kill(index)
    time.sleep(3)
    for index in range(3):
        healthy.restart(index, wait=False)
    healthy.wait_ready()

    # Drivers come back by themselves and serve link calls again.
    for driver in drivers:
        assert wait_until(
            lambda d=driver: (
                d.state is SessionState.REGISTERED and d.lease_valid()
            ),
            20,
        )
    assert wait_until(lambda: _can_link(drivers[0], "after-restart"), 20)
    with EtcdStore(healthy.endpoints, timeout=5) as store:
        kvs, _ = store.get_prefix(keyspace.links_prefix("game"))
        stored = {
            keyspace.uid_from_link_key("game", kv.key): link_from_kv("", kv)
            for kv in kvs
        }
        # etcd restarts lease countdowns on restart (FR04), so the pods
        # kept their leases and G5 holds for every acknowledged link.
        for uid, result in made.items():
            assert stored[uid].pod_id == result.pod_id
        count, _ = store.count_prefix(keyspace.pods_prefix("game"))
        assert count == 3


def _can_link(driver: ServerDriver, uid: str) -> bool:
    try:
        return driver.try_set_linked_pod(uid).pod_id == driver.pod_id
    except StoreError:
        return False


def test_fr06_leader_moves_never_stretch_the_local_deadline(
    healthy: EmbeddedEtcd,
    pods: Callable[[DriverConfig], tuple[list[ServerDriver], Keyspace]],
) -> None:
    drivers, keyspace = pods(CONFIG)
    run = Contention(drivers, [f"u{i}" for i in range(40)]).start()
    worst: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            for driver in drivers:
                worst.append(driver.session.lease_deadline - time.monotonic())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for step in range(4):
        move_leader(healthy, (step + 1) % 3)
        time.sleep(1.5)
    sampling.set()
    sampler.join()
    run.finish()

    # The local deadline never runs further ahead than the granted TTL
    # minus the margin, whatever etcd answered during the moves.
    limit = CONFIG.lease_ttl - CONFIG.fencing_margin
    assert max(worst) <= limit + 0.01
    # etcdctl, as an independent oracle, reports no TTL above granted.
    for driver in drivers:
        out = etcdctl(healthy, "lease", "timetolive", f"{driver.lease_id:x}")
        remaining = int(out.split("remaining(")[1].split("s)")[0])
        assert remaining <= CONFIG.lease_ttl
    with EtcdStore(healthy.endpoints, timeout=5) as store:
        run.check(store, keyspace)
    assert run.lost == []


def test_revoke_lease_with_etcdctl(healthy: EmbeddedEtcd) -> None:
    with EtcdStore(healthy.endpoints, timeout=5) as store:
        lease, _ = store.grant_lease(30)
        revoke_lease(lease, etcd=healthy)
        assert store.lease_keys(lease) is None
