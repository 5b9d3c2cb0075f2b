"""The four ways of keeping a ``uid -> pod`` table that the benchmark compares.

Every variant offers the same five calls (try_set, set, remove,
remove_with_id, get) on the same keys and values as etcdroute's own
layout, and answers with the history format's ``result`` objects, so one
harness drives them all and one check judges them all:

``etcdroute``
    :class:`~etcdroute.links.LinkTable` as a router uses it: the pods'
    registrations are read once and passed as ``target``, so a try_set is
    one transaction.
``raw``
    python-etcd3's own ``transaction()`` doing the same compare-and-set
    (link absent and target registration unchanged, else read the
    owner). It measures what a hand-written call on the bare client
    costs, so this module imports ``etcd3`` directly: the one deliberate
    exception to "only store.py talks to etcd".
``lock``
    A lock per uid with python-etcd3's lock recipe: lock, read, write,
    unlock. Correct while locks do not expire mid-call, but four or more
    round trips, and the recipe grants a lease per acquisition attempt
    and never revokes it (field report FR13): watch the lease count.
``naive``
    Read, then write, with no condition: the negative control. Under
    contention two callers both see "absent" and both are told they
    created the link.

Known shortcomings: ``raw`` and ``lock`` connect to the first endpoint
only and do not support user/password auth (python-etcd3 sends the token
as call credentials, which a plaintext channel refuses); the ``lock``
variant does not check the target's registration.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import etcd3

from etcdroute.errors import (
    EtcdRouteError,
    InvalidArgumentError,
    PodError,
    StoreError,
)
from etcdroute.keys import Keyspace
from etcdroute.links import LinkTable, link_from_kv
from etcdroute.models import PodInfo, encode_link
from etcdroute.store import EtcdStore, parse_endpoints

logger = logging.getLogger(__name__)

VARIANTS = ("etcdroute", "raw", "lock", "naive")

Result = dict[str, Any]


@dataclass(frozen=True)
class PodRef:
    """What a caller knows about a registered pod."""

    pod_id: int
    lease: int
    revision: int
    epoch: int


@dataclass(frozen=True)
class Target:
    """Where a variant works: etcd, keyspace, service and its pods."""

    endpoints: str
    namespace: str
    service: str
    pods: tuple[PodRef, ...]
    prefix: str = "etcdroute"
    timeout: float = 5.0

    @property
    def keyspace(self) -> Keyspace:
        return Keyspace(self.prefix, self.namespace)


class BenchClient:
    """One process's connection of a variant, shared by its threads."""

    name = ""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.keyspace = target.keyspace
        self.pods = {pod.pod_id: pod for pod in target.pods}
        self.values = {
            pod.pod_id: encode_link(pod.pod_id, pod.epoch)
            for pod in target.pods
        }
        self.retries = 0

    def link_key(self, uid: str) -> str:
        return self.keyspace.link_key(self.target.service, uid)

    def pod_key(self, pod_id: int) -> str:
        return self.keyspace.pod_key(self.target.service, pod_id)

    def operation(self, op: str) -> Callable[..., Result]:
        """The bound method running ``op``."""
        method: Callable[..., Result] = getattr(self, op)
        return method

    def outcome_of(self, exc: BaseException) -> str:
        """``"fail"`` if the call surely had no effect, else ``"unknown"``."""
        return "unknown"

    def close(self) -> None:
        """Release the connection."""


def _owner(value: bytes) -> int:
    pod: int = json.loads(value)["pod"]
    return pod


# ------------------------------------------------------------ etcdroute


class _CountingStore(EtcdStore):
    """An EtcdStore that counts transactions (to report retries).

    ``next()`` on an ``itertools.count`` is atomic under the GIL, so the
    threads sharing the store need no lock.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.txns = itertools.count()

    def txn(self, *args: Any, **kwargs: Any) -> Any:
        next(self.txns)
        return super().txn(*args, **kwargs)


class EtcdrouteClient(BenchClient):
    """etcdroute's LinkTable with cached registrations (router mode).

    ``retries`` counts transactions beyond the one each try_set, set and
    remove_with_id needs when nothing changes under it (LinkTable retries
    when a target's registration changed during the call).
    """

    name = "etcdroute"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._store = _CountingStore(target.endpoints, timeout=target.timeout)
        self._table = LinkTable(self._store, self.keyspace)
        pods, _ = self._table.pods(target.service)
        self._registrations: dict[int, PodInfo] = {
            pod.pod_id: pod for pod in pods
        }
        self._expected_txns = itertools.count()

    def try_set(self, uid: str, pod_id: int) -> Result:
        next(self._expected_txns)
        result = self._table.try_set(
            self.target.service,
            uid,
            pod_id,
            target=self._registrations[pod_id],
        )
        return {
            "pod": result.pod_id,
            "created": result.created,
            "revision": result.revision,
        }

    def set(self, uid: str, pod_id: int) -> Result:
        next(self._expected_txns)
        result = self._table.set(self.target.service, uid, pod_id)
        return {
            "pod": result.pod_id,
            "created": result.created,
            "revision": result.revision,
        }

    def remove(self, uid: str, pod_id: int) -> Result:
        return {"removed": self._table.remove(self.target.service, uid)}

    def remove_with_id(self, uid: str, pod_id: int) -> Result:
        next(self._expected_txns)
        removed = self._table.remove_with_id(
            self.target.service,
            uid,
            pod_id,
            epoch=self._registrations[pod_id].epoch,
        )
        return {"removed": removed}

    def get(self, uid: str, pod_id: int) -> Result:
        link = self._table.get(self.target.service, uid)
        if link is None:
            return {"pod": None, "revision": None}
        return {"pod": link.pod_id, "revision": link.revision}

    def outcome_of(self, exc: BaseException) -> str:
        if isinstance(exc, (PodError, InvalidArgumentError)):
            return "fail"
        return "unknown"

    def close(self) -> None:
        # Each count's next value is the number of calls made so far.
        extra = next(self._store.txns) - next(self._expected_txns)
        self.retries = max(0, extra)
        self._store.close()


# ------------------------------------------------------------------ raw


def _etcd3_client(target: Target) -> Any:
    host, port = parse_endpoints(target.endpoints)[0]
    return etcd3.client(host=host, port=port, timeout=target.timeout)


class RawClient(BenchClient):
    """python-etcd3's ``transaction()`` doing etcdroute's compare-and-set."""

    name = "raw"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._client = _etcd3_client(target)
        self._tx = self._client.transactions

    def try_set(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)
        pod = self.pods[pod_id]
        tx = self._tx
        succeeded, responses = self._client.transaction(
            compare=[
                tx.create(key) == 0,
                tx.mod(self.pod_key(pod_id)) == pod.revision,
            ],
            success=[tx.put(key, self.values[pod_id], lease=pod.lease)],
            failure=[tx.get(key)],
        )
        if succeeded:
            revision = responses[0].response_put.header.revision
            return {"pod": pod_id, "created": True, "revision": revision}
        if not responses[0]:
            raise RuntimeError(f"pod {pod_id} registration changed")
        value, meta = responses[0][0]
        return {
            "pod": _owner(value),
            "created": False,
            "revision": meta.mod_revision,
        }

    def set(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)
        pod = self.pods[pod_id]
        tx = self._tx
        succeeded, responses = self._client.transaction(
            compare=[tx.mod(self.pod_key(pod_id)) == pod.revision],
            success=[
                tx.get(key),
                tx.put(key, self.values[pod_id], lease=pod.lease),
            ],
            failure=[],
        )
        if not succeeded:
            raise RuntimeError(f"pod {pod_id} registration changed")
        return {
            "pod": pod_id,
            "created": not responses[0],
            "revision": responses[1].response_put.header.revision,
        }

    def remove(self, uid: str, pod_id: int) -> Result:
        return {"removed": bool(self._client.delete(self.link_key(uid)))}

    def remove_with_id(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)
        tx = self._tx
        succeeded, _ = self._client.transaction(
            compare=[tx.value(key) == self.values[pod_id]],
            success=[tx.delete(key)],
            failure=[],
        )
        return {"removed": bool(succeeded)}

    def get(self, uid: str, pod_id: int) -> Result:
        value, meta = self._client.get(self.link_key(uid))
        if value is None:
            return {"pod": None, "revision": None}
        return {"pod": _owner(value), "revision": meta.mod_revision}

    def close(self) -> None:
        self._client.close()


# ----------------------------------------------------------------- lock


class LockClient(RawClient):
    """Lock per uid (python-etcd3 recipe), then read, write, unlock."""

    name = "lock"

    #: TTL of each lock's lease; the recipe grants one per attempt.
    LOCK_TTL = 10
    #: How long one acquisition attempt waits before it counts a retry.
    ACQUIRE_WAIT = 2.0
    #: Attempts before a call gives up (outcome "fail": nothing written).
    MAX_ATTEMPTS = 5

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        _quiet_etcd3_watch_crashes()

    def _locked(self, uid: str, action: Callable[[], Result]) -> Result:
        name = f"{self.target.namespace}/{self.target.service}/{uid}"
        lock = self._client.lock(name, ttl=self.LOCK_TTL)
        for _ in range(self.MAX_ATTEMPTS):
            if lock.acquire(timeout=self.ACQUIRE_WAIT):
                break
            self.retries += 1
        else:
            raise TimeoutError(f"lock of {uid!r} not acquired")
        try:
            return action()
        finally:
            lock.release()

    def _put(self, key: str, pod_id: int) -> int:
        response = self._client.put(
            key, self.values[pod_id], lease=self.pods[pod_id].lease
        )
        revision: int = response.header.revision
        return revision

    def try_set(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)

        def claim() -> Result:
            value, meta = self._client.get(key)
            if value is not None:
                return {
                    "pod": _owner(value),
                    "created": False,
                    "revision": meta.mod_revision,
                }
            revision = self._put(key, pod_id)
            return {"pod": pod_id, "created": True, "revision": revision}

        return self._locked(uid, claim)

    def set(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)

        def overwrite() -> Result:
            value, _ = self._client.get(key)
            revision = self._put(key, pod_id)
            return {
                "pod": pod_id,
                "created": value is None,
                "revision": revision,
            }

        return self._locked(uid, overwrite)

    def remove(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)
        return self._locked(
            uid, lambda: {"removed": bool(self._client.delete(key))}
        )

    def remove_with_id(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)

        def remove_own() -> Result:
            value, _ = self._client.get(key)
            if value is None or _owner(value) != pod_id:
                return {"removed": False}
            return {"removed": bool(self._client.delete(key))}

        return self._locked(uid, remove_own)

    def outcome_of(self, exc: BaseException) -> str:
        # Only the lock itself failed: nothing was read or written.
        return "fail" if isinstance(exc, TimeoutError) else "unknown"


def _quiet_etcd3_watch_crashes() -> None:
    """Keep python3-etcd3's watch-thread crash out of the terminal.

    python3-etcd3 0.13.0 ends its watch thread with ``NameError: six``
    whenever a watch stream ends (its client deadline ends the stream
    every few seconds). The lock recipe waits on that watch; a waiter
    whose watch died still wakes when its acquire timeout runs out, so
    the recipe stays correct, only slower. The crash is logged at DEBUG.
    """
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        thread = args.thread.name if args.thread is not None else ""
        if args.exc_type is NameError and thread.startswith("etcd3_watch"):
            logger.debug("python3-etcd3 watch thread %s crashed", thread)
            return
        previous(args)

    threading.excepthook = hook


# ---------------------------------------------------------------- naive


class NaiveClient(BenchClient):
    """Read, then write unconditionally: the negative control."""

    name = "naive"

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        self._store = EtcdStore(target.endpoints, timeout=target.timeout)

    def try_set(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)
        kv, _ = self._store.get(key)
        if kv is not None:
            link = link_from_kv(uid, kv)
            return {
                "pod": link.pod_id,
                "created": False,
                "revision": link.revision,
            }
        revision = self._store.put(
            key, self.values[pod_id], lease=self.pods[pod_id].lease
        )
        return {"pod": pod_id, "created": True, "revision": revision}

    def set(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)
        kv, _ = self._store.get(key)
        revision = self._store.put(
            key, self.values[pod_id], lease=self.pods[pod_id].lease
        )
        return {"pod": pod_id, "created": kv is None, "revision": revision}

    def remove(self, uid: str, pod_id: int) -> Result:
        deleted, _ = self._store.delete(self.link_key(uid))
        return {"removed": deleted > 0}

    def remove_with_id(self, uid: str, pod_id: int) -> Result:
        key = self.link_key(uid)
        kv, _ = self._store.get(key)
        if kv is None or link_from_kv(uid, kv).pod_id != pod_id:
            return {"removed": False}
        deleted, _ = self._store.delete(key)
        return {"removed": deleted > 0}

    def get(self, uid: str, pod_id: int) -> Result:
        kv, _ = self._store.get(self.link_key(uid))
        if kv is None:
            return {"pod": None, "revision": None}
        link = link_from_kv(uid, kv)
        return {"pod": link.pod_id, "revision": link.revision}

    def outcome_of(self, exc: BaseException) -> str:
        if isinstance(exc, StoreError) or not isinstance(exc, EtcdRouteError):
            return "unknown"
        return "fail"

    def close(self) -> None:
        self._store.close()


_CLIENTS: dict[str, type[BenchClient]] = {
    "etcdroute": EtcdrouteClient,
    "raw": RawClient,
    "lock": LockClient,
    "naive": NaiveClient,
}


def open_client(variant: str, target: Target) -> BenchClient:
    """Connect one process's client of ``variant``."""
    if variant not in _CLIENTS:
        raise InvalidArgumentError(
            "variant", f"{variant!r} is not one of {', '.join(VARIANTS)}"
        )
    return _CLIENTS[variant](target)
