"""Fencing on a real etcd: local ownership view, loss signal, guarded
transactions (G6), and the lease-loss field reports FR01, FR05, FR12,
FR13 on one member."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from conftest import FAST
from polling import wait_until

from etcdroute import (
    InvalidArgumentError,
    NotOwnerError,
    ServerDriver,
    SessionState,
)
from etcdroute.fencing import OwnershipLoss
from etcdroute.models import encode_link
from etcdroute.store import Compare, EtcdStore, Get, Put

MakeDriver = Callable[..., ServerDriver]


def link_key(driver: ServerDriver, uid: str) -> str:
    return driver.keyspace.link_key(driver.service, uid)


def data_key(driver: ServerDriver, name: str) -> str:
    return f"{driver.keyspace.root}data/{name}"


# ------------------------------------------------------- local records


def test_owns_what_it_linked_and_token_is_the_link_revision(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    driver = make_driver(1)
    result = driver.try_set_linked_pod("u1")

    assert driver.ownership.owns("u1")
    assert not driver.ownership.owns("u2")
    kv, _ = store.get(link_key(driver, "u1"))
    assert kv is not None
    assert driver.ownership.token("u1") == result.revision == kv.mod_revision
    assert driver.ownership.token("u2") is None


def test_a_link_made_by_someone_else_to_this_pod_is_owned_on_try_set(
    make_driver: MakeDriver,
) -> None:
    one, two = make_driver(1), make_driver(2)
    made = two.try_set_linked_pod("u1", 1)  # a router-like claim for pod 1
    assert not one.ownership.owns("u1")

    seen = one.try_set_linked_pod("u1")
    assert not seen.created
    assert one.ownership.owns("u1")
    assert one.ownership.token("u1") == made.revision


def test_removing_a_link_forgets_it(make_driver: MakeDriver) -> None:
    driver = make_driver(1)
    driver.try_set_linked_pod("u1")
    driver.try_set_linked_pod("u2")
    driver.remove_linked_pod("u1")
    driver.remove_linked_pod_with_id("u2")

    assert driver.ownership.owned() == []
    with pytest.raises(NotOwnerError) as caught:
        driver.ownership.fenced_write("u1", data_key(driver, "u1"), b"x")
    assert caught.value.uid == "u1"
    assert not driver.ownership.ownership_lost.is_set()


def test_stop_drops_every_claim_and_tells_listeners(
    make_driver: MakeDriver,
) -> None:
    driver = make_driver(1)
    losses: list[OwnershipLoss] = []
    driver.ownership.add_listener(losses.append)
    driver.try_set_linked_pod("u1")

    driver.stop()

    assert not driver.ownership.owns("u1")
    assert [loss.uids for loss in losses] == [(("game", "u1"),)]
    assert driver.ownership.wait_lost(timeout=0)


# ---------------------------------------------------- guarded writes


def test_fenced_write_applies_while_owner(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    driver = make_driver(1)
    driver.try_set_linked_pod("u1")
    key = data_key(driver, "u1")

    revision = driver.ownership.fenced_write("u1", key, b"state-1")

    kv, _ = store.get(key)
    assert kv is not None
    assert kv.value == b"state-1"
    assert kv.mod_revision == revision


def test_guarded_write_fails_after_the_link_moved(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    one, two = make_driver(1), make_driver(2)
    one.try_set_linked_pod("u1")
    losses: list[OwnershipLoss] = []
    one.ownership.add_listener(losses.append)
    moved = two.set_linked_pod("u1", 2)  # admin migration behind 1's back

    # Pod 1 was not told: its local view still says owner...
    assert one.ownership.owns("u1")
    key = data_key(one, "u1")
    with pytest.raises(NotOwnerError) as caught:
        one.ownership.fenced_write("u1", key, b"stale")

    # ...but etcd refused, nothing was written, and the loss is signalled.
    assert caught.value.owner == 2
    assert caught.value.revision == moved.revision
    assert store.get(key)[0] is None
    assert not one.ownership.owns("u1")
    assert one.ownership.ownership_lost.is_set()
    assert [loss.uids for loss in losses] == [(("game", "u1"),)]


def test_value_alone_is_not_enough_a_moved_back_link_is_refused(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    one, two = make_driver(1), make_driver(2)
    first = one.try_set_linked_pod("u1")
    two.set_linked_pod("u1", 2)
    two.set_linked_pod("u1", 1)  # same value as pod 1 recorded, newer rev

    kv, _ = store.get(link_key(one, "u1"))
    assert kv is not None
    assert kv.value == encode_link(1, one.epoch)
    assert kv.mod_revision > first.revision
    with pytest.raises(NotOwnerError):
        one.ownership.fenced_write("u1", data_key(one, "u1"), b"stale")
    assert store.get(data_key(one, "u1"))[0] is None


def test_own_compare_failing_is_not_a_loss(make_driver: MakeDriver) -> None:
    driver = make_driver(1)
    driver.try_set_linked_pod("u1")
    key = data_key(driver, "u1")

    result = driver.ownership.guarded_txn(
        "u1",
        compares=[Compare(key, "version", "==", 5)],
        success=[Put(key, b"never")],
        failure=[Get(key)],
    )

    assert not result.succeeded
    assert result.results == [[]]  # only the caller's failure branch
    assert driver.ownership.owns("u1")
    assert not driver.ownership.ownership_lost.is_set()


@pytest.mark.parametrize(
    "key",
    [
        "etcdroute/other-ns/data/x",
        "elsewhere",
        "etcdroute/{ns}-suffix/data/x",
        "etcdroute/{ns}/links/game/u2",
        "etcdroute/{ns}/pods/game/0000000002",
    ],
)
def test_guarded_write_outside_the_namespace_or_on_library_keys_refused(
    make_driver: MakeDriver, namespace: str, store: EtcdStore, key: str
) -> None:
    driver = make_driver(1)
    driver.try_set_linked_pod("u1")
    key = key.format(ns=namespace)

    with pytest.raises(InvalidArgumentError) as caught:
        driver.ownership.fenced_write("u1", key, b"x")

    assert caught.value.argument == "key"
    assert store.get(key)[0] is None


# ------------------------------------------- FR12: stalled past the TTL


def test_fr12_stalled_pod_loses_uid_and_its_guarded_ops_fail(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    one, two = make_driver(1), make_driver(2)
    one.try_set_linked_pod("u1")
    pod_key = one.keyspace.pod_key("game", 1)
    lost_at: list[float] = []
    waiter = threading.Thread(
        target=lambda: lost_at.append(
            time.monotonic() if one.ownership.wait_lost(30) else -1.0
        )
    )
    waiter.start()

    # Stall pod 1: no more keepalives; etcd expires its lease.
    one._state_job.pause()
    assert wait_until(lambda: store.get(pod_key)[0] is None, 15)
    gone_at = time.monotonic()
    waiter.join(30)

    # The local view dropped ownership before etcd could expire the lease.
    assert lost_at and 0 < lost_at[0] <= gone_at
    assert not one.ownership.owns("u1")
    assert two.try_set_linked_pod("u1").pod_id == 2

    # Woken up, pod 1's owner-guarded operations fail.
    key = data_key(one, "u1")
    with pytest.raises(NotOwnerError):
        one.ownership.fenced_write("u1", key, b"stale")
    old_lease = one.lease_id
    one._state_job.resume()
    assert wait_until(
        lambda: (
            one.state is SessionState.REGISTERED and one.lease_id != old_lease
        ),
        10,
    )
    with pytest.raises(NotOwnerError):
        one.ownership.fenced_write("u1", key, b"stale")
    with pytest.raises(NotOwnerError) as caught:
        one.ownership.adopt("u1")
    assert caught.value.owner == 2
    assert store.get(key)[0] is None


# ---------------------------------------- FR01: lease revoked outside


def test_fr01_revoked_lease_is_lost_once_and_pod_registers_again(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    driver = make_driver(1)
    driver.try_set_linked_pod("u1")
    transitions: list[SessionState] = []
    driver.add_listener(lambda t: transitions.append(t.new))
    losses: list[OwnershipLoss] = []
    driver.ownership.add_listener(losses.append)
    old_lease, old_epoch = driver.lease_id, driver.epoch

    driver._state_job.pause()
    assert store.revoke_lease(old_lease)
    driver._state_job.resume()

    assert wait_until(
        lambda: (
            driver.state is SessionState.REGISTERED
            and driver.lease_id != old_lease
        ),
        10,
    )
    assert transitions.count(SessionState.LOST) == 1
    assert driver.epoch > old_epoch
    assert [loss.uids for loss in losses] == [(("game", "u1"),)]
    # The lease-bound link died with the lease and is not recreated.
    assert store.get(link_key(driver, "u1"))[0] is None
    # New links use the new lease (FR02: never one captured earlier).
    driver.try_set_linked_pod("u2")
    kv, _ = store.get(link_key(driver, "u2"))
    assert kv is not None and kv.lease == driver.lease_id
    time.sleep(3 * driver.config.state_interval)
    assert driver.lease_id == kv.lease
    assert transitions.count(SessionState.LOST) == 1


# ------------------------------------------ FR05: every lease at once


def test_fr05_all_leases_revoked_every_pod_registers_again(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    drivers = [make_driver(pod) for pod in range(6)]
    old = {d.pod_id: d.lease_id for d in drivers}
    threads = [
        threading.Thread(target=store.revoke_lease, args=(lease,))
        for lease in old.values()
    ]
    revoked_at = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    period = drivers[0].config.state_interval
    # One state period to notice, up to half a period of jitter, plus
    # generous slack for a shared CI machine.
    assert wait_until(
        lambda: all(
            d.state is SessionState.REGISTERED and d.lease_id != old[d.pod_id]
            for d in drivers
        ),
        2 * period + 5,
    )
    assert time.monotonic() - revoked_at < 2 * period + 5
    pods = drivers[0].pods()
    assert sorted(p.pod_id for p in pods) == list(range(6))
    assert {p.lease for p in pods} == {d.lease_id for d in drivers}


# ---------------------------------------------- FR13: leases per pod


def test_fr13_one_lease_per_pod_under_contention(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    baseline = store.lease_count()
    drivers = [make_driver(pod) for pod in range(4)]
    counts: list[int] = []
    errors: list[BaseException] = []

    def contend(driver: ServerDriver) -> None:
        try:
            for round_ in range(15):
                for uid in range(8):
                    driver.try_set_linked_pod(f"u{round_}-{uid}")
                counts.append(store.lease_count())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(d,)) for d in drivers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not errors
    assert counts and set(counts) == {baseline + 4}
    for driver in drivers:
        driver.stop()
    assert store.lease_count() == baseline


def test_persistent_links_are_adopted_by_the_next_life(
    make_driver: MakeDriver, store: EtcdStore
) -> None:
    persistent = replace(FAST, persistent_links=True)
    driver = make_driver(1, config=persistent)
    first = driver.try_set_linked_pod("u1")
    old_lease, old_epoch = driver.lease_id, driver.epoch

    assert store.revoke_lease(old_lease)
    assert wait_until(lambda: driver.lease_id != old_lease, 10)
    assert wait_until(lambda: driver.state is SessionState.REGISTERED, 10)

    # The link survived the lease but belongs to the earlier life.
    kv, _ = store.get(link_key(driver, "u1"))
    assert kv is not None and kv.mod_revision == first.revision
    assert kv.value == encode_link(1, old_epoch)
    assert not driver.ownership.owns("u1")

    token = driver.ownership.adopt("u1")

    kv, _ = store.get(link_key(driver, "u1"))
    assert kv is not None and kv.value == encode_link(1, driver.epoch)
    assert kv.lease == 0 and kv.mod_revision == token > first.revision
    assert driver.ownership.token("u1") == token
    driver.ownership.fenced_write("u1", data_key(driver, "u1"), b"ok")
    # Adopting again is idempotent: same link, same token.
    assert driver.ownership.adopt("u1") == token
    with pytest.raises(NotOwnerError) as caught:
        driver.ownership.adopt("never-linked")
    assert caught.value.owner is None
