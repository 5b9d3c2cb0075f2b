"""Each link operation's semantics, against a real etcd."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from etcdroute import (
    EtcdStore,
    PodNotAcceptingError,
    PodNotRegisteredError,
    RoutingState,
    ServerDriver,
)
from etcdroute.keys import Keyspace

Factory = Callable[..., ServerDriver]


def test_try_set_creates_then_reports_owner(make_driver: Factory) -> None:
    pod1, pod2 = make_driver(1), make_driver(2)

    first = pod1.try_set_linked_pod("u1")
    second = pod2.try_set_linked_pod("u1")

    assert (first.pod_id, first.created) == (1, True)
    assert (second.pod_id, second.created) == (1, False)
    assert second.revision == first.revision


def test_try_set_to_another_pod(make_driver: Factory) -> None:
    pod1, _ = make_driver(1), make_driver(2)
    result = pod1.try_set_linked_pod("u1", 2)
    assert (result.pod_id, result.created) == (2, True)
    link = pod1.get_linked_pod("u1")
    assert link is not None and link.pod_id == 2


def test_set_overrides_and_revision_grows(make_driver: Factory) -> None:
    pod1, _ = make_driver(1), make_driver(2)

    made = pod1.try_set_linked_pod("u1")
    moved = pod1.set_linked_pod("u1", 2)
    fresh = pod1.set_linked_pod("u2", 2)

    assert (moved.pod_id, moved.created) == (2, False)
    assert moved.revision > made.revision
    assert fresh.created
    assert pod1.get_linked_pod("u1").pod_id == 2  # type: ignore[union-attr]


def test_set_to_draining_pod_is_allowed_but_not_try_set(
    make_driver: Factory,
) -> None:
    pod1, pod2 = make_driver(1), make_driver(2)
    pod2.set_routing_state(RoutingState.DRAINING)

    with pytest.raises(PodNotAcceptingError) as info:
        pod1.try_set_linked_pod("u1", 2)
    assert info.value.pod_id == 2 and info.value.routing_state == "draining"
    assert pod1.set_linked_pod("u1", 2).pod_id == 2


def test_remove(make_driver: Factory) -> None:
    pod1 = make_driver(1)
    pod1.try_set_linked_pod("u1")
    assert pod1.remove_linked_pod("u1") is True
    assert pod1.remove_linked_pod("u1") is False
    assert pod1.get_linked_pod("u1") is None


def test_remove_with_id_compares_owner(make_driver: Factory) -> None:
    pod1, _ = make_driver(1), make_driver(2)
    pod1.try_set_linked_pod("u1", 2)

    assert pod1.remove_linked_pod_with_id("u1", 1) is False
    assert pod1.get_linked_pod("u1") is not None
    assert pod1.remove_linked_pod_with_id("u1", 2) is True
    assert pod1.get_linked_pod("u1") is None


def test_links_to_unregistered_pod_refused(make_driver: Factory) -> None:
    pod1 = make_driver(1)
    with pytest.raises(PodNotRegisteredError) as info:
        pod1.try_set_linked_pod("u1", 99)
    assert info.value.pod_id == 99
    with pytest.raises(PodNotRegisteredError):
        pod1.set_linked_pod("u1", 99)
    assert pod1.get_linked_pod("u1") is None


def test_linked_uids_lists_only_that_pod(make_driver: Factory) -> None:
    pod1, pod2 = make_driver(1), make_driver(2)
    for uid in ("a", "b/c", ".."):
        pod1.try_set_linked_pod(uid)
    pod2.try_set_linked_pod("z")
    assert sorted(pod1.linked_uids()) == sorted(["a", "b/c", ".."])
    assert pod1.linked_uids(2) == ["z"]


def test_lease_bound_links_end_with_the_pod(make_driver: Factory) -> None:
    pod1, pod2 = make_driver(1), make_driver(2)
    pod2.try_set_linked_pod("u1")
    pod2.stop()
    assert pod1.get_linked_pod("u1") is None


def test_persistent_links_outlive_the_pod(
    make_driver: Factory, namespace: str
) -> None:
    from dataclasses import replace

    from tests.conftest import FAST

    persistent = replace(FAST, persistent_links=True)
    pod1 = make_driver(1, config=persistent)
    pod2 = make_driver(2, config=persistent)
    pod2.try_set_linked_pod("u1")
    pod2.stop()

    link = pod1.get_linked_pod("u1")
    assert link is not None and link.pod_id == 2 and link.lease == 0


def test_stale_life_cannot_remove_newer_lifes_link(
    make_driver: Factory,
) -> None:
    """A process from an earlier life of pod 2 has a smaller epoch."""
    from dataclasses import replace

    from tests.conftest import FAST

    persistent = replace(FAST, persistent_links=True)
    old_life = make_driver(2, config=persistent)
    old_epoch = old_life.epoch
    old_life.stop()

    new_life = make_driver(2, config=persistent)
    assert new_life.epoch > old_epoch
    new_life.try_set_linked_pod("u1")

    # Replay the stale process's compare-and-delete with its old epoch.
    table = new_life._links
    assert table.remove_with_id("game", "u1", 2, epoch=old_epoch) is False
    assert new_life.get_linked_pod("u1") is not None

    # The new life may remove links of its own and of earlier lives.
    assert new_life.remove_linked_pod_with_id("u1") is True


def test_workload_job_publishes_link_count(make_driver: Factory) -> None:
    pod1 = make_driver(1)
    for uid in ("a", "b", "c"):
        pod1.try_set_linked_pod(uid)
    pod1._workload_job.trigger()

    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (me,) = [p for p in pod1.pods() if p.pod_id == 1]
        if me.workload == 3:
            break
        time.sleep(0.1)
    assert me.workload == 3


def test_load_state_is_published(make_driver: Factory) -> None:
    import time

    pod1 = make_driver(1)
    pod1.set_load_state(42)
    assert pod1.get_load_state() == 42
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if [p.load for p in pod1.pods()] == [42]:
            break
        time.sleep(0.1)
    assert [p.load for p in pod1.pods()] == [42]


def test_custom_workload_function(make_driver: Factory) -> None:
    import time

    pod1 = make_driver(1, workload=lambda: 17)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if [p.workload for p in pod1.pods()] == [17]:
            break
        time.sleep(0.1)
    assert [p.workload for p in pod1.pods()] == [17]


def test_keys_stay_in_own_namespace(
    make_driver: Factory, store: EtcdStore, namespace: str
) -> None:
    pod1 = make_driver(1)
    for uid in ("../../other/links/game/x", "/", "..", "a/b"):
        pod1.try_set_linked_pod(uid)
    root = Keyspace("etcdroute", namespace).root
    everything, _ = store.get_prefix("")
    ours = [kv.key for kv in everything if kv.key.startswith(root)]
    assert len(ours) == 2 + 4  # registration, load report, four links
    assert all(
        kv.key.startswith(root)
        for kv in everything
        if kv.lease == pod1.lease_id
    )


def test_planted_keys_and_values_are_skipped(
    make_driver: Factory, store: EtcdStore, namespace: str
) -> None:
    pod = make_driver(1)
    pod.try_set_linked_pod("good")
    links = Keyspace("etcdroute", namespace).links_prefix("game")
    store.put(links + "%FF", b'{"epoch":1,"pod":1,"v":1}')
    store.put(links + "bad-value", b"not json")
    store.put(links + "wrong-type", b'{"epoch":1,"pod":"1","v":1}')

    assert pod.linked_uids() == ["good"]
    found, _ = pod._links.links("game")
    assert [link.uid for link in found] == ["good"]
