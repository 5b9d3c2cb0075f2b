"""Bad input: a clear exception naming the argument, nothing changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from etcdroute import (
    DriverConfig,
    EtcdStore,
    InvalidArgumentError,
    ServerDriver,
)

Factory = Callable[..., ServerDriver]

BAD_UIDS = ["", "nul\x00byte", "bell\x07", "x" * 10_000, "\udcff", 42, None]
LINK_CALLS: list[tuple[str, Callable[[ServerDriver, Any], Any]]] = [
    ("try_set", lambda d, uid: d.try_set_linked_pod(uid)),
    ("set", lambda d, uid: d.set_linked_pod(uid)),
    ("remove", lambda d, uid: d.remove_linked_pod(uid)),
    ("remove_with_id", lambda d, uid: d.remove_linked_pod_with_id(uid)),
    ("get", lambda d, uid: d.get_linked_pod(uid)),
]


def _revision(store: EtcdStore) -> int:
    return store.status().revision


@pytest.mark.parametrize("uid", BAD_UIDS, ids=repr)
@pytest.mark.parametrize(
    "name,call", LINK_CALLS, ids=[n for n, _ in LINK_CALLS]
)
def test_bad_uid(
    make_driver: Factory,
    store: EtcdStore,
    uid: object,
    name: str,
    call: Callable[[ServerDriver, Any], Any],
) -> None:
    pod = make_driver(1)
    before = _revision(store)
    with pytest.raises(InvalidArgumentError) as info:
        call(pod, uid)
    assert info.value.argument == "uid"
    assert _revision(store) == before


@pytest.mark.parametrize("pod_id", [-1, True, "2", 2.0, 10**11])
def test_bad_target_pod_id(
    make_driver: Factory, store: EtcdStore, pod_id: object
) -> None:
    pod = make_driver(1)
    before = _revision(store)
    for call in (
        pod.try_set_linked_pod,
        pod.set_linked_pod,
        pod.remove_linked_pod_with_id,
    ):
        with pytest.raises(InvalidArgumentError) as info:
            call("u1", pod_id)  # type: ignore[arg-type]
        assert info.value.argument == "pod_id"
    assert _revision(store) == before


def test_wrong_namespace_is_refused(
    make_driver: Factory, store: EtcdStore
) -> None:
    pod = make_driver(1)
    before = _revision(store)
    for bad in ("other", "../x", ""):
        with pytest.raises(InvalidArgumentError) as info:
            pod.try_set_linked_pod("u1", namespace=bad)
        assert info.value.argument == "namespace"
    assert _revision(store) == before


def test_bad_service_is_refused(
    make_driver: Factory, store: EtcdStore
) -> None:
    pod = make_driver(1)
    before = _revision(store)
    with pytest.raises(InvalidArgumentError) as info:
        pod.try_set_linked_pod("u1", service="../pods")
    assert info.value.argument == "service"
    assert _revision(store) == before


def test_unknown_routing_state(make_driver: Factory, store: EtcdStore) -> None:
    pod = make_driver(1)
    before = _revision(store)
    for bad in ("sleeping", 3, None):
        with pytest.raises(InvalidArgumentError) as info:
            pod.set_routing_state(bad)  # type: ignore[arg-type]
        assert info.value.argument == "routing_state"
    assert _revision(store) == before


@pytest.mark.parametrize("load", [-1, 1.5, "7", True])
def test_bad_load(make_driver: Factory, load: object) -> None:
    pod = make_driver(1)
    with pytest.raises(InvalidArgumentError) as info:
        pod.set_load_state(load)  # type: ignore[arg-type]
    assert info.value.argument == "load"
    assert pod.get_load_state() == 0


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"pod_id": -1}, "pod_id"),
        ({"namespace": "a/b"}, "namespace"),
        ({"service": ""}, "service"),
        ({"address": 5}, "address"),
        ({"address": "a\x00b"}, "address"),
        ({"address": "\udcff"}, "address"),
        ({"workload": 5}, "workload"),
    ],
)
def test_bad_constructor_arguments(
    etcd_endpoints: str, kwargs: dict[str, Any], argument: str
) -> None:
    args: dict[str, Any] = {"namespace": "ns", "service": "game", "pod_id": 1}
    args.update(kwargs)
    with pytest.raises(InvalidArgumentError) as info:
        ServerDriver(etcd_endpoints, **args)
    assert info.value.argument == argument


@pytest.mark.parametrize(
    "kwargs,argument",
    [
        ({"lease_ttl": 1}, "lease_ttl"),
        ({"lease_ttl": 2.5}, "lease_ttl"),
        ({"state_interval": 0}, "state_interval"),
        ({"lease_ttl": 6, "state_interval": 3}, "state_interval"),
        ({"workload_interval": -1}, "workload_interval"),
        ({"fencing_margin": 100}, "fencing_margin"),
        ({"prefix": "../x"}, "prefix"),
        ({"persistent_links": "yes"}, "persistent_links"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        DriverConfig(**kwargs)
    assert info.value.argument == argument


@pytest.mark.parametrize("endpoints", ["", "nohost", "host:notaport", ","])
def test_bad_endpoints(endpoints: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        EtcdStore(endpoints)
    assert info.value.argument == "endpoints"


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), "5"])
def test_bad_timeout(timeout: object) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        EtcdStore("127.0.0.1:2379", timeout=timeout)  # type: ignore[arg-type]
    assert info.value.argument == "timeout"


def test_bad_store_and_clock_arguments(etcd_endpoints: str) -> None:
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: EtcdStore(etcd_endpoints, timeout=True), "timeout"),
        (lambda: EtcdStore(etcd_endpoints, credentials="x"), "credentials"),
        (
            lambda: ServerDriver(
                etcd_endpoints,
                namespace="ns",
                service="s",
                pod_id=1,
                clock=None,  # type: ignore[arg-type]
            ),
            "clock",
        ),
    ]
    for make, argument in cases:
        with pytest.raises(InvalidArgumentError) as info:
            make()
        assert info.value.argument == argument
