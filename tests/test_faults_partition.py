"""A pod partitioned from etcd by a TCP proxy while etcd keeps running.

Field reports FR02 (a lease that answered not-found is never used again;
back under one new lease quickly) and FR03 (the state job survives any
outage), plus the lease-loss policy for links (docs/guarantees.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from polling import wait_until

from etcdroute import (
    DriverConfig,
    EtcdStore,
    LeaseLostError,
    ServerDriver,
    SessionState,
    StoreError,
)
from etcdroute.fencing import OwnershipLoss
from etcdroute.jobs import Backoff
from etcdroute.session import Transition
from etcdroute.testing import TcpProxy

CONFIG = DriverConfig(
    lease_ttl=2,
    state_interval=0.5,
    workload_interval=5.0,
    fencing_margin=0.3,
    max_backoff=0.5,
)
CALL_TIMEOUT = 1.0


@pytest.fixture
def proxy(etcd_endpoints: str) -> Iterator[TcpProxy]:
    with TcpProxy(etcd_endpoints.split(",")[0]) as started:
        yield started


@pytest.fixture
def proxied_driver(
    proxy: TcpProxy, namespace: str
) -> Iterator[Callable[[DriverConfig], ServerDriver]]:
    made: list[ServerDriver] = []

    def factory(config: DriverConfig) -> ServerDriver:
        driver = ServerDriver(
            proxy.endpoint,
            namespace=namespace,
            service="game",
            pod_id=1,
            config=config,
            timeout=CALL_TIMEOUT,
        )
        made.append(driver)
        return driver.start()

    yield factory
    for driver in made:
        driver.stop()


def test_proxy_cut_fails_calls_within_deadline_and_restore_heals(
    proxy: TcpProxy,
) -> None:
    with EtcdStore(proxy.endpoint, timeout=CALL_TIMEOUT) as through:
        through.put("proxy-check", b"1")
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(StoreError):
            through.get("proxy-check")
        assert time.monotonic() - started < CALL_TIMEOUT + 1.5
        proxy.restore()
        assert wait_until(lambda: _readable(through), 10)
        proxy.delay(0.2)
        started = time.monotonic()
        assert through.get("proxy-check")[0] is not None
        assert time.monotonic() - started >= 0.2
        proxy.delay(0)
        through.delete("proxy-check")


def _readable(store: EtcdStore) -> bool:
    try:
        store.get("proxy-check")
    except StoreError:
        return False
    return True


def test_fr02_partition_longer_than_ttl_then_heal(
    proxy: TcpProxy,
    proxied_driver: Callable[[DriverConfig], ServerDriver],
    store: EtcdStore,
) -> None:
    driver = proxied_driver(CONFIG)
    for uid in ("u1", "u2"):
        driver.try_set_linked_pod(uid)
    losses: list[OwnershipLoss] = []
    driver.ownership.add_listener(losses.append)
    transitions: list[Transition] = []
    driver.add_listener(transitions.append)
    old_lease, old_epoch = driver.lease_id, driver.epoch
    pod_key = driver.keyspace.pod_key("game", 1)

    proxy.cut()
    cut_at = time.monotonic()

    # The pod stops claiming ownership by its local deadline...
    assert driver.ownership.wait_lost(10)
    noticed = time.monotonic()
    assert noticed <= driver.session.lease_deadline + 0.5
    assert not driver.ownership.owns("u1")
    # ...which comes before etcd expires the lease.
    assert wait_until(lambda: store.get(pod_key)[0] is None, 15)
    assert noticed <= time.monotonic()
    # Link calls fail within their deadline with a clear error (no I/O
    # at all for this pod's own links once its deadline has passed).
    started = time.monotonic()
    with pytest.raises((StoreError, LeaseLostError)):
        driver.try_set_linked_pod("u3")
    assert time.monotonic() - started < 2 * CALL_TIMEOUT + 1

    time.sleep(max(0.0, 6.0 - (time.monotonic() - cut_at)))
    proxy.restore()
    healed = time.monotonic()

    # Back under one new lease within two state periods (plus slack for
    # gRPC to reconnect on a shared machine).
    assert wait_until(
        lambda: (
            driver.state is SessionState.REGISTERED
            and driver.lease_id != old_lease
        ),
        10,
    )
    assert time.monotonic() - healed < 2 * CONFIG.state_interval + 3
    assert driver.epoch > old_epoch
    assert [t.new for t in transitions].count(SessionState.LOST) == 1
    assert store.lease_keys(old_lease) is None
    pods = driver.pods()
    assert [(p.pod_id, p.lease) for p in pods] == [(1, driver.lease_id)]

    # Policy: lease-bound links died with the lease, are reported lost
    # once, and are not recreated.
    assert sorted(uid for loss in losses for _, uid in loss.uids) == [
        "u1",
        "u2",
    ]
    assert driver.linked_uids() == []

    # The dead lease id is never used again; new links use the new one.
    result = driver.try_set_linked_pod("u3")
    kv, _ = store.get(driver.keyspace.link_key("game", "u3"))
    assert kv is not None and kv.lease == driver.lease_id
    assert result.created
    time.sleep(4 * CONFIG.state_interval)
    assert driver.state is SessionState.REGISTERED
    assert driver.lease_id == kv.lease


@pytest.mark.slow
def test_fr03_state_job_survives_a_long_outage(
    proxy: TcpProxy,
    proxied_driver: Callable[[DriverConfig], ServerDriver],
    store: EtcdStore,
) -> None:
    config = DriverConfig(
        lease_ttl=2,
        state_interval=0.5,
        workload_interval=5.0,
        fencing_margin=0.3,
        max_backoff=1.0,
    )
    driver = proxied_driver(config)
    old_lease = driver.lease_id

    for _ in range(2):
        proxy.cut()
        time.sleep(12)
        # Still trying, reported as not registered, not claiming anything.
        assert driver._state_job.alive
        assert driver.state in (SessionState.DEGRADED, SessionState.LOST)
        assert not driver.lease_valid()
        proxy.restore()
        healed = time.monotonic()
        assert wait_until(
            lambda old=old_lease: (
                driver.state is SessionState.REGISTERED
                and driver.lease_id != old
            ),
            15,
        )
        # Back within the backoff cap + TTL (plus reconnect slack).
        waited = time.monotonic() - healed
        assert waited < config.max_backoff + config.lease_ttl + 3
        old_lease = driver.lease_id
        assert driver.try_set_linked_pod("u1").pod_id == 1


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff(0.2, 1.0)
    delays = [backoff.next() for _ in range(40)]
    assert max(delays) <= 1.0
    assert min(delays[10:]) >= 0.5
    assert len(set(delays)) > 30
