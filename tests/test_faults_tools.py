"""The public fault helpers of etcdroute.testing, on a real etcd."""

from __future__ import annotations

import queue

import pytest

from etcdroute import CompactedError, EtcdStore, InvalidArgumentError
from etcdroute.testing import compact, revoke_lease


def test_revoke_lease_through_a_store(store: EtcdStore) -> None:
    lease, _ = store.grant_lease(30)
    store.put("tools/leased", b"x", lease=lease)

    revoke_lease(lease, store=store)

    assert store.lease_keys(lease) is None
    assert store.get("tools/leased")[0] is None
    with pytest.raises(InvalidArgumentError):
        revoke_lease(lease)


def test_compact_makes_old_revisions_unwatchable(store: EtcdStore) -> None:
    first = store.put("tools/compacted", b"1")
    store.put("tools/compacted", b"2")

    upto = compact(store)

    assert upto > first
    # etcd confirms the watch, then cancels it as compacted: the error
    # comes from start() or, just after, through on_error.
    errors: queue.Queue[Exception] = queue.Queue()
    try:
        stream = store.watch_prefix(
            "tools/compacted",
            start_revision=first,
            on_batch=lambda batch: None,
            on_error=errors.put,
        )
    except CompactedError:
        pass
    else:
        assert isinstance(errors.get(timeout=10), CompactedError)
        stream.cancel()
    store.delete("tools/compacted")
