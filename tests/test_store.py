"""The store seam against a real etcd: revisions, leases, errors, watch."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from etcdroute import (
    EtcdStore,
    LifecycleError,
    StoreUnavailableError,
    WatchRefusedError,
)
from etcdroute.store import Compare, Get, Put, WatchBatch


def test_txn_reports_header_revision(store: EtcdStore, namespace: str) -> None:
    key = f"{namespace}/k"
    result = store.txn(
        [Compare(key, "create", "==", 0)],
        success=[Put(key, b"v"), Get(key)],
        failure=[Get(key)],
    )
    kv = result.read(1)
    assert result.succeeded and kv is not None
    assert kv.mod_revision == result.revision
    again = store.txn([Compare(key, "create", "==", 0)], failure=[Get(key)])
    assert not again.succeeded
    assert again.read(0) == kv
    store.delete_prefix(f"{namespace}/")


def test_get_prefix_pages_form_one_snapshot(
    store: EtcdStore, namespace: str
) -> None:
    prefix = f"{namespace}/p/"
    for index in range(25):
        store.put(f"{prefix}{index:03d}", b"x")
    kvs, revision = store.get_prefix(prefix, page_size=7)
    assert [kv.key for kv in kvs] == [f"{prefix}{i:03d}" for i in range(25)]
    assert store.count_prefix(prefix)[0] == 25
    store.put(f"{prefix}999", b"late")
    at_snapshot, _ = store.get_prefix(prefix, revision=revision, page_size=4)
    assert len(at_snapshot) == 25
    assert store.delete_prefix(prefix) == 26


def test_keepalive_of_revoked_lease_answers_ttl_zero(store: EtcdStore) -> None:
    """FR01: etcd answers a dead lease with TTL <= 0, not an error."""
    lease, ttl = store.grant_lease(5)
    assert ttl == 5
    assert store.keepalive(lease) > 0
    assert store.revoke_lease(lease) is True
    assert store.keepalive(lease) <= 0
    assert store.revoke_lease(lease) is False
    assert store.lease_keys(lease) is None


def test_unreachable_etcd_fails_within_deadline() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with EtcdStore(f"127.0.0.1:{port}", timeout=1.0) as dead:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError) as info:
            dead.get("k")
        assert time.monotonic() - started < 5
    assert "grpc" not in type(info.value).__module__
    assert isinstance(info.value.__cause__, Exception)


def test_closed_store_refuses_calls(etcd_endpoints: str) -> None:
    opened = EtcdStore(etcd_endpoints)
    opened.close()
    opened.close()
    with pytest.raises(LifecycleError):
        opened.get("k")


def test_store_refuses_use_after_fork(etcd_endpoints: str) -> None:
    """FR11: a forked child gets a clear error, never a dead channel."""
    opened = EtcdStore(etcd_endpoints)
    opened.get("k")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report what happened through the pipe
        os.close(read)
        try:
            opened.get("k")
            message = b"no error"
        except LifecycleError:
            message = b"LifecycleError"
        except BaseException as exc:
            message = type(exc).__name__.encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        assert pipe.read() == b"LifecycleError"
    opened.get("k")  # the parent's store still works
    opened.close()


def test_watch_delivers_changes_in_order(
    store: EtcdStore, namespace: str
) -> None:
    prefix = f"{namespace}/w/"
    _, start = store.get_prefix(prefix)
    batches: list[WatchBatch] = []
    got = threading.Event()

    def on_batch(batch: WatchBatch) -> None:
        batches.append(batch)
        if sum(len(b.events) for b in batches) >= 3:
            got.set()

    stream = store.watch_prefix(
        prefix,
        start_revision=start + 1,
        on_batch=on_batch,
        on_error=lambda exc: None,
    )
    store.put(f"{prefix}a", b"1")
    store.put(f"{prefix}b", b"2")
    store.delete(f"{prefix}a")
    assert got.wait(10)
    stream.cancel()
    events = [e for b in batches for e in b.events]
    assert [(e.kv.key[-1], e.deleted) for e in events] == [
        ("a", False),
        ("b", False),
        ("a", True),
    ]
    revisions = [e.kv.mod_revision for e in events]
    assert revisions == sorted(revisions)
    store.delete_prefix(prefix)


def test_watch_on_compacted_revision_fails_fast(
    store: EtcdStore, namespace: str
) -> None:
    key = f"{namespace}/c"
    first = store.put(key, b"1")
    last = store.put(key, b"2")
    store.delete(key)
    store.compact(last)
    errors: list[Exception] = []
    try:
        stream = store.watch_prefix(
            key,
            start_revision=first,
            on_batch=lambda b: None,
            on_error=errors.append,
        )
    except Exception as exc:  # refused at start
        assert type(exc).__name__ == "CompactedError"
        return
    # etcd may confirm the watch first and cancel it right after.
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    stream.cancel()
    assert errors and type(errors[0]).__name__ == "CompactedError"


def test_watch_refused_type_exists() -> None:
    error = WatchRefusedError("p/", "permission denied")
    assert error.prefix == "p/" and "permission denied" in str(error)
