"""Driver lifecycle, registration and lease handling on a real etcd."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from polling import wait_until

from etcdroute import (
    EtcdStore,
    InvalidArgumentError,
    LeaseLostError,
    LifecycleError,
    PodIdConflictError,
    RoutingState,
    ServerDriver,
    SessionState,
    Transition,
)
from etcdroute.keys import Keyspace

Factory = Callable[..., ServerDriver]


def test_start_registers_atomically(
    make_driver: Factory, store: EtcdStore, namespace: str
) -> None:
    pod = make_driver(3, address="10.0.0.3:7000")
    keyspace = Keyspace("etcdroute", namespace)

    registration, _ = store.get(keyspace.pod_key("game", 3))
    load, _ = store.get(keyspace.load_key("game", 3))

    assert registration is not None and load is not None
    assert registration.lease == load.lease == pod.lease_id
    assert registration.create_revision == pod.epoch
    (info,) = pod.pods()
    assert (info.address, info.routing_state) == (
        "10.0.0.3:7000",
        RoutingState.ACCEPTING,
    )
    assert pod.state is SessionState.REGISTERED


def test_start_twice_and_after_stop(make_driver: Factory) -> None:
    pod = make_driver(1)
    with pytest.raises(LifecycleError):
        pod.start()
    pod.stop()
    pod.stop()  # idempotent
    with pytest.raises(LifecycleError):
        pod.start()
    with pytest.raises(LifecycleError):
        pod.try_set_linked_pod("u1")


def test_calls_before_start_are_refused(make_driver: Factory) -> None:
    pod = make_driver(1, start=False)
    with pytest.raises(LifecycleError):
        pod.try_set_linked_pod("u1")
    pod.set_routing_state("draining")  # only sets the initial state
    pod.start()
    (info,) = pod.pods()
    assert info.routing_state is RoutingState.DRAINING


def test_stop_revokes_lease_and_joins_jobs(
    make_driver: Factory, store: EtcdStore, namespace: str
) -> None:
    pod = make_driver(1)
    pod.try_set_linked_pod("u1")
    pod.set_load_state(5)
    lease = pod.lease_id

    pod.stop()

    keyspace = Keyspace("etcdroute", namespace)
    kvs, _ = store.get_prefix(keyspace.root)
    assert kvs == []
    assert store.lease_keys(lease) is None  # revoked, not left to expire
    assert not pod._state_job.alive and not pod._workload_job.alive
    assert pod.state is SessionState.STOPPED
    assert not pod.lease_valid()


def test_context_manager(etcd_endpoints: str, namespace: str) -> None:
    with ServerDriver(
        etcd_endpoints, namespace=namespace, service="game", pod_id=1
    ) as pod:
        assert pod.try_set_linked_pod("u1").created
    assert pod.state is SessionState.STOPPED
    assert pod.store.closed


def test_duplicate_pod_id_is_a_conflict(
    make_driver: Factory, store: EtcdStore
) -> None:
    first = make_driver(7)
    leases = store.lease_count()
    second = make_driver(7, start=False)

    with pytest.raises(PodIdConflictError) as info:
        second.start()

    assert info.value.pod_id == 7
    assert info.value.holder_lease == first.lease_id
    # The loser's lease was revoked. Leases of other tests can only
    # expire meanwhile (the count can drop), never appear.
    assert store.lease_count() <= leases
    assert first.state is SessionState.REGISTERED

    # Once the holder is gone, the same driver object may start.
    first.stop()
    second.start()
    assert second.epoch > first.epoch


def test_routing_state_is_synchronous(make_driver: Factory) -> None:
    pod1, pod2 = make_driver(1), make_driver(2)
    for state in (RoutingState.DRAINING, RoutingState.OFFLINE):
        pod2.set_routing_state(state)
        assert pod2.get_routing_state() is state
        (info,) = [p for p in pod1.pods() if p.pod_id == 2]
        assert info.routing_state is state
    pod2.set_routing_state("accepting")
    assert pod1.try_set_linked_pod("u1", 2).created


def test_keepalive_keeps_pod_past_its_ttl(make_driver: Factory) -> None:
    pod = make_driver(1)
    pod.try_set_linked_pod("u1")
    time.sleep(3 * pod.config.lease_ttl)
    assert pod.state is SessionState.REGISTERED
    assert pod.get_linked_pod("u1") is not None
    assert pod.lease_valid()


def test_lease_lost_is_detected_once_and_pod_registers_again(
    make_driver: Factory, store: EtcdStore
) -> None:
    """FR01/FR02: a revoked lease answers TTL 0; the pod comes back."""
    pod = make_driver(1)
    pod.set_routing_state(RoutingState.DRAINING)
    pod.set_load_state(9)
    transitions: list[Transition] = []
    pod.add_listener(transitions.append)
    old_lease, old_epoch = pod.lease_id, pod.epoch

    # Stall the state job, revoke the lease from outside, then resume.
    pod._state_job.pause()
    assert store.revoke_lease(old_lease)
    pod._state_job.resume()

    assert wait_until(
        lambda: (
            pod.state is SessionState.REGISTERED and pod.lease_id != old_lease
        )
    )
    lost = [t for t in transitions if t.new is SessionState.LOST]
    assert len(lost) == 1 and lost[0].lease_id == old_lease
    assert pod.epoch > old_epoch

    # Registration restored with the state the pod had.
    (info,) = pod.pods()
    assert info.routing_state is RoutingState.DRAINING
    assert info.lease == pod.lease_id
    assert wait_until(lambda: pod.pods()[0].load == 9)

    # New links use the new lease, never the dead one.
    pod.set_routing_state(RoutingState.ACCEPTING)
    pod.try_set_linked_pod("u2")
    link = pod.get_linked_pod("u2")
    assert link is not None and link.lease == pod.lease_id != old_lease


def test_lease_bound_links_are_lost_with_the_lease(
    make_driver: Factory, store: EtcdStore
) -> None:
    pod = make_driver(1)
    pod.try_set_linked_pod("u1")
    old_lease = pod.lease_id
    pod._state_job.pause()
    store.revoke_lease(old_lease)
    pod._state_job.resume()
    assert wait_until(lambda: pod.lease_id != old_lease)
    assert pod.get_linked_pod("u1") is None
    assert pod.linked_uids() == []


def test_registration_deleted_by_hand_is_restored(
    make_driver: Factory, store: EtcdStore, namespace: str
) -> None:
    """The state job checks the registration is its own every period."""
    pod = make_driver(1)
    old_lease = pod.lease_id
    transitions: list[Transition] = []
    pod.add_listener(transitions.append)
    store.delete(Keyspace("etcdroute", namespace).pod_key("game", 1))

    assert wait_until(
        lambda: (
            pod.state is SessionState.REGISTERED and pod.lease_id != old_lease
        )
    )
    assert [t.new for t in transitions][:2] == [
        SessionState.LOST,
        SessionState.REGISTERED,
    ]
    assert [p.pod_id for p in pod.pods()] == [1]


def test_stale_process_cannot_claim_after_a_later_life_registered(
    make_driver: Factory, store: EtcdStore
) -> None:
    """A zombie whose pod id was taken by a later life gets no links."""
    old = make_driver(2)
    old._state_job.pause()  # the old process stalls...
    store.revoke_lease(old.lease_id)  # ...its lease runs out...
    new = make_driver(2)  # ...and a later life of pod 2 registers.

    # The stale process still believes it is registered, but every
    # own-pod claim is pinned to its epoch.
    assert old.state is SessionState.REGISTERED
    with pytest.raises(LeaseLostError):
        old.try_set_linked_pod("zombie")
    with pytest.raises(LeaseLostError):
        old.set_linked_pod("zombie")
    assert old.get_linked_pod("zombie") is None

    # Once it wakes up it sees the conflict and stays out.
    old._state_job.resume()
    assert wait_until(lambda: old.state is SessionState.LOST)
    with pytest.raises(LeaseLostError):
        old.try_set_linked_pod("zombie")
    assert new.try_set_linked_pod("zombie").created


def test_no_claims_for_itself_after_local_deadline(
    make_driver: Factory,
) -> None:
    now = [1000.0]
    pod = make_driver(1, clock=lambda: now[0])
    pod._state_job.pause()
    now[0] = pod.session.lease_deadline + 0.01

    with pytest.raises(LeaseLostError) as info:
        pod.try_set_linked_pod("late")
    assert "deadline" in str(info.value)
    assert pod.get_linked_pod("late") is None


def test_drain_requested_while_lost_is_kept(
    make_driver: Factory, store: EtcdStore
) -> None:
    pod = make_driver(1)
    pod._state_job.pause()
    store.revoke_lease(pod.lease_id)

    with pytest.raises(LeaseLostError):
        pod.set_routing_state(RoutingState.DRAINING)
    pod._state_job.resume()

    assert wait_until(lambda: pod.state is SessionState.REGISTERED)
    (info,) = pod.pods()
    assert info.routing_state is RoutingState.DRAINING


def test_failed_with_block_closes_the_connection(
    make_driver: Factory, etcd_endpoints: str, namespace: str
) -> None:
    make_driver(1)
    duplicate = ServerDriver(
        etcd_endpoints, namespace=namespace, service="game", pod_id=1
    )
    with pytest.raises(PodIdConflictError), duplicate:
        pass
    assert duplicate.store.closed


def test_misuse_is_refused(make_driver: Factory) -> None:
    pod = make_driver(1)
    with pytest.raises(InvalidArgumentError) as info:
        pod.add_listener(3)  # type: ignore[arg-type]
    assert info.value.argument == "listener"
    pod.stop()
    with pytest.raises(LifecycleError):
        pod.set_load_state(1)


def test_injected_clock_drives_local_deadline(make_driver: Factory) -> None:
    now = [1000.0]
    pod = make_driver(1, clock=lambda: now[0])
    assert pod.lease_valid()
    deadline = pod.session.lease_deadline
    assert deadline == pytest.approx(1000.0 + 2 - 0.3)
    pod._state_job.pause()
    now[0] = deadline + 0.01
    assert not pod.lease_valid()
