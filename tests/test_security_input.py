"""Hostile input: odd uids stay data, bad arguments change nothing, and
corrupt values planted under etcdroute's keys are skipped, not fatal."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from etcdroute import (
    CorruptValueError,
    DriverConfig,
    EtcdStore,
    InvalidArgumentError,
    ServerDriver,
    SessionState,
)
from etcdroute.embedded import etcdctl_for, find_etcd_binary
from etcdroute.keys import MAX_UID_BYTES

MakeDriver = Callable[..., ServerDriver]

ODD_UIDS = [
    "a/b",
    "/",
    "..",
    ".",
    "../../pods/game/0000000001",
    "%2F",
    "%",
    "100%",
    "space and ü",
    "emoji-\U0001f600",
    "x" * MAX_UID_BYTES,
    "\u00e9" * (MAX_UID_BYTES // 2),
]


def _keys(store: EtcdStore, prefix: str) -> list[str]:
    kvs, _ = store.get_prefix(prefix, keys_only=True)
    return [kv.key for kv in kvs]


def test_odd_uids_are_data_one_key_each_inside_the_links_prefix(
    make_driver: MakeDriver, store: EtcdStore, namespace: str
) -> None:
    driver = make_driver(1)
    for uid in ODD_UIDS:
        assert driver.try_set_linked_pod(uid).created, uid

    links = driver.keyspace.links_prefix("game")
    keys = _keys(store, links)
    assert len(keys) == len(ODD_UIDS)
    assert all("/" not in key[len(links) :] for key in keys)
    assert sorted(driver.linked_uids()) == sorted(ODD_UIDS)
    for uid in ODD_UIDS:
        link = driver.get_linked_pod(uid)
        assert link is not None and link.pod_id == 1
    # Nothing outside the namespace root; the pod key was not touched.
    everywhere = _keys(store, "etcdroute/")
    mine = [k for k in everywhere if namespace in k]
    assert all(k.startswith(driver.keyspace.root) for k in mine)
    pods = driver.pods()
    assert [(p.pod_id, p.epoch) for p in pods] == [(1, driver.epoch)]


BAD_UIDS: list[Any] = [
    "",
    "\x00",
    "a\x00b",
    "line\nbreak",
    "tab\t",
    "del\x7f",
    "\udcff",  # a lone surrogate: what invalid UTF-8 bytes decode to
    "lone-\ud800-surrogate",
    "x" * (MAX_UID_BYTES + 1),
    "\u00e9" * (MAX_UID_BYTES // 2 + 1),
    b"bytes",
    b"\xff\xfe",
    42,
    None,
]


@pytest.mark.parametrize("uid", BAD_UIDS, ids=range(len(BAD_UIDS)))
def test_bad_uids_are_refused_before_any_io(
    make_driver: MakeDriver, store: EtcdStore, uid: Any
) -> None:
    driver = make_driver(1)
    before = _keys(store, driver.keyspace.root)
    calls = [
        lambda: driver.try_set_linked_pod(uid),
        lambda: driver.set_linked_pod(uid),
        lambda: driver.remove_linked_pod(uid),
        lambda: driver.remove_linked_pod_with_id(uid),
        lambda: driver.get_linked_pod(uid),
        lambda: driver.ownership.owns(uid),
        lambda: driver.ownership.fenced_write(
            uid, driver.keyspace.root + "data/x", b"1"
        ),
    ]
    for call in calls:
        with pytest.raises(InvalidArgumentError) as caught:
            call()
        assert caught.value.argument == "uid"
    assert _keys(store, driver.keyspace.root) == before


BAD_NAMES: list[Any] = [
    "",
    "a/b",
    "..",
    "a..b",
    "-leading",
    "x" * 64,
    "nul\x00",
    "ü",
    b"bytes",
    None,
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=range(len(BAD_NAMES)))
@pytest.mark.parametrize("argument", ["namespace", "service"])
def test_bad_names_are_refused(
    etcd_endpoints: str, namespace: str, name: Any, argument: str
) -> None:
    kwargs: dict[str, Any] = {"namespace": namespace, "service": "game"}
    kwargs[argument] = name
    with pytest.raises(InvalidArgumentError) as caught:
        ServerDriver(etcd_endpoints, pod_id=1, **kwargs)
    assert caught.value.argument == argument


@pytest.mark.parametrize("name", BAD_NAMES[:-1], ids=range(len(BAD_NAMES) - 1))
def test_bad_service_in_a_call_is_refused(
    make_driver: MakeDriver, name: Any
) -> None:
    driver = make_driver(1)
    with pytest.raises(InvalidArgumentError) as caught:
        driver.try_set_linked_pod("u1", service=name)
    assert caught.value.argument == "service"


@pytest.mark.parametrize("pod_id", [-1, True, 1.5, "1", 10**10, None])
def test_bad_pod_ids_are_refused(
    make_driver: MakeDriver, store: EtcdStore, pod_id: Any
) -> None:
    driver = make_driver(1)
    before = _keys(store, driver.keyspace.root)
    if pod_id is not None:
        with pytest.raises(InvalidArgumentError) as caught:
            driver.try_set_linked_pod("u1", pod_id)
        assert caught.value.argument == "pod_id"
    with pytest.raises(InvalidArgumentError):
        ServerDriver(
            store, namespace="ns", service="game", pod_id=pod_id or -5
        )
    assert _keys(store, driver.keyspace.root) == before


# ----------------------------------------------------- planted values


def test_corrupt_values_are_skipped_and_counted_not_fatal(
    make_driver: MakeDriver,
    store: EtcdStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = make_driver(1, config=DriverConfig(lease_ttl=15))
    driver.try_set_linked_pod("good")
    keyspace = driver.keyspace
    pods, loads = keyspace.pods_prefix("game"), keyspace.load_prefix("game")
    links = keyspace.links_prefix("game")
    planted = {
        pods + "0000000002": b"not json",
        pods
        + "0000000003": b'{"v":1,"pod":4,"address":"","state":"accepting"}',
        pods + "0000000005": b'{"v":1,"pod":5,"address":"","state":"bogus"}',
        pods + "abc": b'{"v":1,"pod":1,"address":"","state":"accepting"}',
        loads + "0000000001x": b"{}",
        loads + "zzz": b'{"v":1,"load":1,"workload":1}',
        links + "bad-json": b"\xff\xfe",
        links + "negative": b'{"epoch":1,"pod":-1,"v":1}',
        links + "future-format": b'{"epoch":1,"pod":1,"v":99}',
        links + "%FF": b'{"epoch":1,"pod":1,"v":1}',
        links + "%": b'{"epoch":1,"pod":1,"v":1}',
    }
    for key, value in planted.items():
        store.put(key, value)
    before = {kv.key: kv.mod_revision for kv in store.get_prefix(links)[0]}

    caplog.set_level(logging.WARNING)
    assert [p.pod_id for p in driver.pods()] == [1]
    assert driver.linked_uids() == ["good"]
    assert driver._links.corrupt_skipped >= len(planted) - 1
    assert "skipping corrupt" in caplog.text

    # A direct call on a corrupt link is a clear error naming the key,
    # and changes nothing.
    for uid in ("bad-json", "negative", "future-format"):
        with pytest.raises(CorruptValueError) as caught:
            driver.get_linked_pod(uid)
        assert caught.value.key == links + uid
        with pytest.raises(CorruptValueError):
            driver.try_set_linked_pod(uid)
    after = {kv.key: kv.mod_revision for kv in store.get_prefix(links)[0]}
    assert after == before
    assert driver.state is SessionState.REGISTERED


def test_etcdctl_sees_no_key_outside_the_namespace(
    make_driver: MakeDriver, namespace: str, etcd_endpoints: str
) -> None:
    etcdctl = etcdctl_for(find_etcd_binary())
    if etcdctl is None:
        pytest.skip("etcdctl not found")
    driver = make_driver(1)
    for uid in ODD_UIDS:
        driver.try_set_linked_pod(uid)
    out = subprocess.run(
        [
            etcdctl,
            f"--endpoints={etcd_endpoints}",
            *("get", "--prefix", "--keys-only", ""),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    mine = [k for k in out.splitlines() if namespace in k]
    assert mine and all(k.startswith(f"etcdroute/{namespace}/") for k in mine)
    assert len([k for k in mine if "/links/" in k]) == len(ODD_UIDS)
