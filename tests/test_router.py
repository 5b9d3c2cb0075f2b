"""The client router against a real etcd: routing, coherence, agreement.

Every check compares the router with etcd itself (read through a
separate store), never with a mock.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from conftest import FAST
from polling import wait_until

from etcdroute import (
    Consistency,
    EtcdStore,
    InvalidArgumentError,
    LifecycleError,
    NoPodAvailableError,
    Router,
    RouterConfig,
    RoutingState,
    ServerDriver,
    Source,
)
from etcdroute.keys import Keyspace
from etcdroute.linkcache import CachedLink
from etcdroute.mirror import MirrorState
from etcdroute.models import decode_link

SERVICE = "game"


def etcd_links(store: EtcdStore, namespace: str) -> dict[str, CachedLink]:
    """Every link of the service as etcd holds it now."""
    keyspace = Keyspace("etcdroute", namespace)
    kvs, _ = store.get_prefix(keyspace.links_prefix(SERVICE))
    found = {}
    for kv in kvs:
        pod_id, _ = decode_link(kv.key, kv.value)
        uid = keyspace.uid_from_link_key(SERVICE, kv.key)
        found[uid] = CachedLink(pod_id, kv.mod_revision)
    return found


@pytest.fixture
def pods(make_driver: Callable[..., ServerDriver]) -> list[ServerDriver]:
    return [
        make_driver(pod_id, address=f"10.0.0.{pod_id}:7000")
        for pod_id in range(3)
    ]


# ------------------------------------------------------------ routing


def test_new_uid_is_claimed_then_served_from_cache(
    pods: list[ServerDriver], make_router: Any, store: EtcdStore
) -> None:
    router = make_router()
    first = router.route("player/../42")
    assert first.created and first.source is Source.ETCD
    assert first.address == f"10.0.0.{first.pod_id}:7000"
    link = pods[0].get_linked_pod("player/../42")
    assert link is not None and link.pod_id == first.pod_id
    assert first.link_revision == link.revision

    assert router.sync()
    cached = router.route("player/../42")
    assert cached.source is Source.CACHE and cached.from_cache
    assert (cached.pod_id, cached.link_revision) == (
        first.pod_id,
        link.revision,
    )
    assert cached.revision >= link.revision
    assert not cached.created

    _, current = store.get("any-key")
    strict = router.route("player/../42", consistency="linearizable")
    assert strict.source is Source.ETCD and not strict.created
    assert strict.pod_id == first.pod_id
    assert strict.revision >= current  # a current read, not the cache


def test_lookup_never_writes(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    router = make_router()
    assert router.lookup("nobody") is None
    assert router.lookup("nobody", consistency="linearizable") is None
    assert etcd_links(store, namespace) == {}
    pods[1].try_set_linked_pod("u1", 1)
    found = router.lookup("u1", consistency=Consistency.LINEARIZABLE)
    assert found is not None and found.pod_id == 1 and not found.created


def test_linearizable_ignores_the_cache_and_bound_bypasses_it(
    pods: list[ServerDriver], make_router: Any
) -> None:
    router = make_router()
    router.route("u1")
    assert router.sync()
    owner = router.route("u1").pod_id
    other = (owner + 1) % 3

    # Freeze the cache, move the link behind its back.
    router._mirror.pause()
    try:
        pods[0].set_linked_pod("u1", other)
        stale = router.route("u1", max_staleness=60)
        assert stale.source is Source.CACHE and stale.pod_id == owner
        strict = router.route("u1", consistency="linearizable")
        assert strict.source is Source.ETCD and strict.pod_id == other
        time.sleep(0.05)
        bounded = router.route("u1", max_staleness=0.01)
        assert bounded.source is Source.ETCD and bounded.pod_id == other
    finally:
        router._mirror.resume()
    assert wait_until(lambda: router.route("u1").pod_id == other)


def test_router_wide_linearizable_default(
    pods: list[ServerDriver], make_router: Any
) -> None:
    router = make_router(
        config=RouterConfig(consistency=Consistency.LINEARIZABLE)
    )
    router.route("u1")
    assert router.sync()
    assert router.route("u1").source is Source.ETCD
    assert router.route("u1", consistency="cached").source is Source.CACHE


def test_no_accepting_pod(
    make_driver: Callable[..., ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    router = make_router()
    with pytest.raises(NoPodAvailableError) as caught:
        router.route("u1")
    assert caught.value.service == SERVICE and caught.value.uid == "u1"
    drained = make_driver(4)
    drained.set_routing_state(RoutingState.DRAINING)
    assert router.sync()
    with pytest.raises(NoPodAvailableError):
        router.route("u1")
    assert etcd_links(store, namespace) == {}


def test_draining_pods_receive_no_new_uids(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    router = make_router()
    assert router.sync()
    # Drain right before routing: the router's table may still say
    # accepting; the claim transaction must refuse anyway.
    pods[1].set_routing_state(RoutingState.DRAINING)
    owners = {router.route(f"new-{i}").pod_id for i in range(120)}
    assert owners == {0, 2}
    assert {link.pod_id for link in etcd_links(store, namespace).values()} == {
        0,
        2,
    }


def test_pod_table_follows_registrations(
    make_driver: Callable[..., ServerDriver], make_router: Any
) -> None:
    first = make_driver(1, address="a:1")
    router = make_router()
    assert [p.pod_id for p in router.pods()] == [1]
    second = make_driver(2, address="b:2")
    second.set_load_state(7)
    assert wait_until(lambda: [p.pod_id for p in router.pods()] == [1, 2])
    assert wait_until(lambda: router.pods()[1].load == 7)
    first.stop()
    assert wait_until(lambda: [p.pod_id for p in router.pods()] == [2])


# ---------------------------------------------------------- agreement


def test_two_routers_racing_on_new_uids_agree(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    routers = [make_router(), make_router()]
    uids = [f"race-{i}" for i in range(40)]
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        router = routers[index % 2]
        order = list(uids)
        random.Random(index).shuffle(order)
        barrier.wait()
        for uid in order:
            try:
                mode = "linearizable" if index % 4 < 2 else "cached"
                result = router.route(uid, consistency=mode)
            except BaseException as exc:  # recorded and failed below
                errors.append(exc)
                return
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    truth = etcd_links(store, namespace)
    assert set(truth) == set(uids)
    for uid in uids:
        answers = [r for r in results if r.uid == uid]
        assert len(answers) == 8
        assert {r.pod_id for r in answers} == {truth[uid].pod_id}
        assert sum(r.created for r in answers) == 1


# ---------------------------------------------------------- coherence


def test_coherence_under_churn(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    router = make_router()
    uids = [f"churn-{i}" for i in range(60)]
    for uid in uids[:40]:
        router.route(uid)
    stop = threading.Event()
    errors: list[BaseException] = []

    def serve() -> None:
        rng = random.Random()
        while not stop.is_set():
            try:
                result = router.lookup(rng.choice(uids))
                assert result is None or result.pod_id in (0, 1, 2)
            except BaseException as exc:
                errors.append(exc)
                return

    def churn() -> None:
        rng = random.Random(7)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            uid = rng.choice(uids)
            action = rng.random()
            if action < 0.4:
                pods[0].set_linked_pod(uid, rng.randrange(3))
            elif action < 0.7:
                pods[0].remove_linked_pod(uid)
            else:
                pods[0].try_set_linked_pod(uid, rng.randrange(3))

    servers = [threading.Thread(target=serve) for _ in range(4)]
    for thread in servers:
        thread.start()
    churn()
    stop.set()
    for thread in servers:
        thread.join()
    assert errors == []

    assert router.sync()
    assert router.cached() == etcd_links(store, namespace)
    assert router.state is MirrorState.LIVE


def test_list_watch_gap_loses_nothing(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    pods[0].try_set_linked_pod("before", 0)
    pods[0].try_set_linked_pod("doomed", 1)
    calls: list[int] = []

    def between_list_and_watch(revision: int) -> None:
        # Runs after the snapshot at `revision`, before the watch starts.
        calls.append(revision)
        pods[0].set_linked_pod("before", 2)
        pods[0].remove_linked_pod("doomed")
        pods[0].try_set_linked_pod("during", 1)

    router = make_router(_on_listed=between_list_and_watch)
    assert len(calls) == 1
    assert router.sync()
    assert router.cached() == etcd_links(store, namespace)
    assert set(router.cached()) == {"before", "during"}
    assert router.route("before").pod_id == 2


def test_resync_after_compaction(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    """FR07: watch resumes from a compacted revision; re-list and re-watch."""
    for index, uid in enumerate(["a", "b", "c"]):
        pods[0].try_set_linked_pod(uid, index)
    in_resync = threading.Event()
    release = threading.Event()

    def hold_resync(revision: int) -> None:
        if in_resync.is_set() or not resync_armed.is_set():
            return
        in_resync.set()
        release.wait(10)

    resync_armed = threading.Event()
    router = make_router(_on_listed=hold_resync)
    assert router.sync()
    assert router.route("a").source is Source.CACHE

    # Lose the watch while changes happen, then compact them away.
    router._mirror.pause()
    router._mirror.drop_watch()
    pods[0].set_linked_pod("a", 2)
    pods[0].remove_linked_pod("b")
    pods[0].try_set_linked_pod("d", 1)
    _, revision = store.get("anything")
    store.compact(revision)
    resync_armed.set()
    router._mirror.resume()

    # While the resync runs, lookups go to etcd, never to old entries.
    assert in_resync.wait(10)
    assert router.state is MirrorState.RESYNCING
    during = router.route("a")
    assert during.source is Source.ETCD and during.pod_id == 2
    assert router.lookup("b") is None
    release.set()

    assert wait_until(lambda: router.state is MirrorState.LIVE)
    assert router.sync()
    assert router.cached() == etcd_links(store, namespace)
    assert router.stats()["resyncs"] == 1
    assert router.route("a").source is Source.CACHE


# --------------------------------------------------------- corrections


def test_correction_only_moves_forward(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    made = pods[0].try_set_linked_pod("u1", 0)
    router = make_router()
    assert router.cached()["u1"] == CachedLink(0, made.revision)
    assert not router.correct("u1", 1, made.revision - 1)
    assert not router.correct("u1", 1, made.revision)
    assert router.route("u1").pod_id == 0

    router._mirror.pause()
    try:
        moved = pods[0].set_linked_pod("u1", 1)
        # The new owner tells us before the watch does.
        assert router.correct("u1", 1, moved.revision)
        hit = router.route("u1")
        assert hit.source is Source.CACHE
        assert (hit.pod_id, hit.link_revision) == (1, moved.revision)
        # An old owner's late word cannot move it back.
        assert not router.correct("u1", 0, made.revision)
    finally:
        router._mirror.resume()
    assert router.sync()
    assert router.cached() == etcd_links(store, namespace)


def test_correction_for_uncached_uid_respects_later_changes(
    pods: list[ServerDriver], make_router: Any
) -> None:
    router = make_router(config=RouterConfig(cache_size=1))
    router.route("keep")
    made = pods[0].try_set_linked_pod("other", 0)
    pods[0].remove_linked_pod("other")
    assert router.sync()
    # The link was removed after `made.revision`: refuse the stale word.
    assert not router.correct("other", 0, made.revision)
    assert "other" not in router.cached()


def test_forged_correction_cannot_plant_an_owner(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    """A correction claiming a revision etcd never had changes nothing."""
    made = pods[0].try_set_linked_pod("b", 0)
    router = make_router()
    router._mirror.pause()
    try:
        assert not router.correct("b", 1, 10**9)
        assert not router.correct("ghost", 1, 10**9)
        hit = router.route("b")
        assert (hit.pod_id, hit.link_revision) == (0, made.revision)
        assert "ghost" not in router.cached()
    finally:
        router._mirror.resume()
    assert router.sync()
    assert router.cached() == etcd_links(store, namespace)


# ------------------------------------------------- unregistered owners


def test_link_of_unregistered_owner_is_replaced_atomically(
    make_driver: Callable[..., ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    persistent = replace(FAST, persistent_links=True)
    gone = make_driver(0, config=persistent, address="gone:1")
    make_driver(1, config=persistent, address="b:1")
    make_driver(2, config=persistent, address="c:1")
    old = gone.try_set_linked_pod("u1", 0)
    gone.stop()
    assert etcd_links(store, namespace)["u1"].pod_id == 0

    config = RouterConfig(persistent_links=True)
    routers = [make_router(config=config), make_router(config=config)]
    assert router_lookup_none(routers[0])
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda r=r: results.append(r.route("u1")))
        for r in routers * 3
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    owners = {r.pod_id for r in results}
    assert len(owners) == 1 and owners <= {1, 2}
    assert sum(r.created for r in results) == 1
    link = etcd_links(store, namespace)["u1"]
    assert link.pod_id in owners and link.revision > old.revision
    kv, _ = store.get(Keyspace("etcdroute", namespace).link_key(SERVICE, "u1"))
    assert kv is not None and kv.lease == 0  # persistent mode kept


def router_lookup_none(router: Router) -> bool:
    """A lookup never takes over: an unregistered owner reads as None."""
    return router.lookup("u1", consistency="linearizable") is None


# ----------------------------------------------------------- lifecycle


def test_lifecycle(pods: list[ServerDriver], make_router: Any) -> None:
    router = make_router(start=False)
    with pytest.raises(LifecycleError):
        router.route("u1")
    router.start()
    with pytest.raises(LifecycleError):
        router.start()
    router.route("u1")
    router.stop()
    router.stop()
    with pytest.raises(LifecycleError):
        router.route("u1")
    with pytest.raises(LifecycleError):
        router.correct("u1", 0, 5)
    with pytest.raises(LifecycleError):
        router.start()
    assert router.state is MirrorState.STOPPED


def test_context_manager_leaves_no_threads(
    pods: list[ServerDriver], etcd_endpoints: str, namespace: str
) -> None:
    before = threading.active_count()
    with Router(etcd_endpoints, namespace=namespace, service=SERVICE) as r:
        r.route("u1")
        assert threading.active_count() > before
    assert wait_until(lambda: threading.active_count() <= before, 5)


def test_shared_store_is_not_closed(
    pods: list[ServerDriver], store: EtcdStore, namespace: str
) -> None:
    with Router(store, namespace=namespace, service=SERVICE) as router:
        router.route("u1")
    assert not store.closed
    store.get("still-usable")


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"uid": ""}, "uid"),
        ({"uid": 7}, "uid"),
        ({"uid": "bad\x00uid"}, "uid"),
        ({"uid": "u", "consistency": "eventual"}, "consistency"),
        ({"uid": "u", "max_staleness": 0}, "max_staleness"),
        ({"uid": "u", "max_staleness": "1"}, "max_staleness"),
    ],
)
def test_bad_route_arguments_change_nothing(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
    kwargs: dict[str, Any],
    argument: str,
) -> None:
    router = make_router()
    uid = kwargs.pop("uid")
    with pytest.raises(InvalidArgumentError) as caught:
        router.route(uid, **kwargs)
    assert caught.value.argument == argument
    assert etcd_links(store, namespace) == {}


def test_bad_correction_and_config(make_router: Any) -> None:
    router = make_router()
    for args, argument in [
        (("", 1, 1), "uid"),
        (("u", -1, 1), "pod_id"),
        (("u", 1, 0), "revision"),
        (("u", 1, True), "revision"),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            router.correct(*args)
        assert caught.value.argument == argument
    for kwargs, argument in [
        ({"max_staleness": -1}, "max_staleness"),
        ({"progress_interval": 5.0}, "progress_interval"),
        ({"cache_size": 0}, "cache_size"),
        ({"consistency": "sometimes"}, "consistency"),
        ({"load_metric": "cpu"}, "load_metric"),
        ({"placement": object()}, "placement"),
        ({"prefix": "../x"}, "prefix"),
    ]:
        with pytest.raises(InvalidArgumentError) as caught:
            RouterConfig(**kwargs)
        assert caught.value.argument == argument
    with pytest.raises(InvalidArgumentError) as caught:
        Router("127.0.0.1:1", namespace="bad/ns", service="game")
    assert caught.value.argument == "namespace"


def test_new_uids_go_to_less_loaded_pods(
    make_driver: Callable[..., ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    make_driver(0, workload=lambda: 1000)
    make_driver(1, workload=lambda: 0)
    make_driver(2, workload=lambda: 0)
    router = make_router()
    assert wait_until(lambda: router.pods()[0].workload == 1000)
    owners = [router.route(f"placed-{i}").pod_id for i in range(60)]
    assert 0 not in owners
    assert owners.count(1) >= 10 and owners.count(2) >= 10
    assert sorted(etcd_links(store, namespace)) == sorted(
        f"placed-{i}" for i in range(60)
    )


def test_links_of_a_crashed_pod_leave_the_cache(
    pods: list[ServerDriver],
    make_router: Any,
    store: EtcdStore,
    namespace: str,
) -> None:
    """FR04/FR05: etcd deletes a dead pod's keys; the router drops them."""
    router = make_router()
    for index in range(6):
        pods[index % 2].try_set_linked_pod(f"owned-{index}", index % 2)
    assert router.sync()
    assert len(router.cached()) == 6

    pods[1]._state_job.pause()  # pod 1 stalls: its lease runs out
    try:
        assert wait_until(
            lambda: 1 not in [pod.pod_id for pod in router.pods()], 15
        )
        assert wait_until(lambda: len(router.cached()) == 3, 5)
        assert {e.pod_id for e in router.cached().values()} == {0}
        assert router.lookup("owned-1") is None
        assert router.cached() == etcd_links(store, namespace)
    finally:
        pods[1]._state_job.resume()


def test_sync_timeout_is_checked(make_router: Any) -> None:
    router = make_router()
    for bad in (None, "x", -1, True):
        with pytest.raises(InvalidArgumentError) as info:
            router.sync(bad)
        assert info.value.argument == "timeout"
    assert router.sync(5)
