"""Which uids this pod owns, and fenced writes that prove it (G6, FR12).

A lease alone does not make a pod the owner of a uid: a process paused
past its TTL wakes up believing it still owns what etcd has long given to
another pod. :class:`Ownership` gives a pod three tools against that:

* a cheap local answer, :meth:`Ownership.owns`: the pod's own record of
  the links it made or adopted (uid, link value, revision) *and* its local
  lease deadline (see :mod:`etcdroute.session`). No I/O. Once the
  deadline passes, every record is dropped and the pod claims nothing
  until it links or adopts again;
* a signal: :attr:`Ownership.ownership_lost` (a ``threading.Event``),
  :meth:`Ownership.wait_lost` and listeners, fired once per loss with the
  uids lost. A loss is the session losing its lease or stopping, the
  local deadline passing, or a guarded call finding the link changed;
* an owner-guarded transaction, :meth:`Ownership.guarded_txn`, that runs
  only if the link still has the *value and the mod revision* recorded
  when the pod got it, and raises :class:`NotOwnerError` otherwise.
  Comparing the value alone is not enough: a link moved away and back
  has the same value but a newer revision, and everything the interim
  owner did happened in between.

The link's revision (:meth:`Ownership.token`) is a fencing token for
stores outside etcd: it only grows for a uid, so a downstream store that
remembers the highest token it accepted per uid rejects a stale owner.
docs/guarantees.md shows the recipe.

Lease-loss policy: lease-bound links die with the lease, so the pod
forgets them, reports them lost once and does *not* recreate them (another
pod may hold them already); the application re-claims what it still
wants with ``try_set_linked_pod``. Persistent links survive: the pod takes
them back with :meth:`Ownership.adopt`, which moves the link to its new
epoch in one compare-and-swap.

Listeners run on the thread that noticed the loss (often the driver's
state job) and must not block.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from etcdroute.errors import (
    CorruptValueError,
    InvalidArgumentError,
    NotOwnerError,
)
from etcdroute.keys import Keyspace, check_name, check_uid
from etcdroute.links import link_from_kv
from etcdroute.models import encode_link
from etcdroute.session import PodSession, SessionState, Transition
from etcdroute.store import (
    Compare,
    Delete,
    EtcdStore,
    Get,
    Operation,
    Put,
    TxnResult,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OwnedLink:
    """What the pod recorded when it got a link."""

    service: str
    uid: str
    value: bytes
    revision: int


@dataclass(frozen=True)
class OwnershipLoss:
    """One loss, as given to listeners: which uids, and why."""

    uids: tuple[tuple[str, str], ...]
    reason: str


LossListener = Callable[[OwnershipLoss], None]


class Ownership:
    """The links one pod believes it owns, with fencing.

    Made by :class:`~etcdroute.driver.ServerDriver` (``driver.ownership``);
    thread-safe.
    """

    def __init__(
        self,
        store: EtcdStore,
        keyspace: Keyspace,
        session: PodSession,
        *,
        persistent: bool,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._clock = clock
        self._keyspace = keyspace
        self._session = session
        self._persistent = persistent
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], OwnedLink] = {}
        self._listeners: list[LossListener] = []
        #: Set when this pod lost ownership of anything; the application
        #: clears it (``ownership_lost.clear()``) once it has reacted.
        self.ownership_lost = threading.Event()
        session.add_listener(self._on_transition)

    # --------------------------------------------------------- queries

    def owns(self, uid: str, *, service: str | None = None) -> bool:
        """Whether this pod may act as owner of ``uid`` now (no I/O)."""
        key = (self._service(service), check_uid(uid))
        if not self.check_deadline():
            return False
        with self._lock:
            return key in self._records

    def token(self, uid: str, *, service: str | None = None) -> int | None:
        """Revision of the owned link (fencing token), or None if not owned."""
        key = (self._service(service), check_uid(uid))
        if not self.check_deadline():
            return None
        with self._lock:
            record = self._records.get(key)
        return None if record is None else record.revision

    def owned(self) -> list[OwnedLink]:
        """Every link this pod may act on now."""
        if not self.check_deadline():
            return []
        with self._lock:
            return list(self._records.values())

    def add_listener(self, listener: LossListener) -> None:
        """Call ``listener(loss)`` on each loss (keep it short)."""
        with self._lock:
            self._listeners.append(listener)

    def wait_lost(self, timeout: float | None = None) -> bool:
        """Block until this pod can claim nothing or lost something.

        Returns False if ``timeout`` passed first. Wakes at the local
        lease deadline too, even when no background job runs to notice
        it (a stalled state job).
        """
        clock = self._clock
        end = None if timeout is None else clock() + timeout
        while True:
            if not self.check_deadline() or self.ownership_lost.is_set():
                return True
            now = clock()
            if end is not None and now >= end:
                return False
            step = self._session.lease_deadline - now
            if end is not None:
                step = min(step, end - now)
            # Poll at least every second: the deadline moves forward on
            # each keepalive, and the clock may be injected.
            self.ownership_lost.wait(max(min(step, 1.0), 0.01))

    # --------------------------------------------------------- records

    def record(
        self, service: str, uid: str, pod_id: int, epoch: int, revision: int
    ) -> None:
        """Remember a link to this pod made or seen at ``revision``."""
        value = encode_link(pod_id, epoch)
        with self._lock:
            self._records[(service, uid)] = OwnedLink(
                service, uid, value, revision
            )

    def forget(self, service: str, uid: str) -> None:
        """Drop a record without signalling (the pod removed the link)."""
        with self._lock:
            self._records.pop((service, uid), None)

    def check_deadline(self) -> bool:
        """False (after signalling the loss) once the lease is not valid."""
        if self._session.lease_valid():
            return True
        self._lose_all("local lease deadline passed")
        return False

    # ------------------------------------------------------ guarded ops

    def guarded_txn(
        self,
        uid: str,
        compares: Sequence[Compare] = (),
        success: Sequence[Operation] = (),
        failure: Sequence[Operation] = (),
        *,
        service: str | None = None,
    ) -> TxnResult:
        """Run a transaction only while this pod owns ``uid``.

        The transaction also compares the link's value and mod revision
        with this pod's record. Returns the result of ``compares`` as
        usual (``succeeded`` False runs ``failure``); raises
        :class:`NotOwnerError` if the pod does not own ``uid`` (locally
        or in etcd; nothing of ``success`` was applied) and
        :class:`InvalidArgumentError` for a key outside this namespace
        or a write to the library's own keys.
        """
        service = self._service(service)
        uid = check_uid(uid)
        self._check_operations(compares, success, failure)
        with self._lock:
            record = self._records.get((service, uid))
        pod_id = self._session.pod_id
        if record is None:
            raise NotOwnerError(
                uid, pod_id, None, 0, reason="this pod holds no link to it"
            )
        if not self.check_deadline():
            raise NotOwnerError(
                uid, pod_id, None, 0, reason="local lease deadline passed"
            )

        link_key = self._keyspace.link_key(service, uid)
        result = self._store.txn(
            [
                Compare(link_key, "value", "==", record.value),
                Compare(link_key, "mod", "==", record.revision),
                *compares,
            ],
            success,
            [Get(link_key), *failure],
        )
        if result.succeeded:
            return result
        current = result.read(0)
        held = (
            current is not None
            and current.value == record.value
            and current.mod_revision == record.revision
        )
        if held:
            # Only the caller's own comparisons failed.
            return TxnResult(False, result.revision, result.results[1:])

        # The link changed: this pod is not the owner any more.
        self._lose([record], "link changed in etcd")
        owner = None
        revision = result.revision
        if current is not None:
            revision = current.mod_revision
            try:
                owner = link_from_kv(uid, current).pod_id
            except CorruptValueError:
                owner = None
        raise NotOwnerError(uid, pod_id, owner, revision)

    def fenced_write(
        self,
        uid: str,
        key: str,
        value: bytes,
        *,
        service: str | None = None,
    ) -> int:
        """Put ``key`` only while this pod owns ``uid``; returns revision."""
        if not isinstance(value, bytes):
            raise InvalidArgumentError("value", "must be bytes")
        return self.guarded_txn(
            uid, success=[Put(key, value)], service=service
        ).revision

    def adopt(self, uid: str, *, service: str | None = None) -> int:
        """Take over the link of ``uid`` if it names this pod; return token.

        For a link a router made to this pod, or a persistent link of an
        earlier life of this pod id (moved to the current epoch in one
        compare-and-swap). Raises :class:`NotOwnerError` if the link is
        absent or names another pod or a later life.
        """
        service = self._service(service)
        uid = check_uid(uid)
        pod_id, epoch = self._session.pod_id, self._session.epoch
        if not self._session.lease_valid():
            raise NotOwnerError(
                uid, pod_id, None, 0, reason="local lease deadline passed"
            )
        link_key = self._keyspace.link_key(service, uid)
        current, revision = self._store.get(link_key)
        if current is None:
            raise NotOwnerError(uid, pod_id, None, revision)
        link = link_from_kv(uid, current)
        if link.pod_id != pod_id or link.epoch > epoch:
            raise NotOwnerError(uid, pod_id, link.pod_id, link.revision)
        if link.epoch == epoch:
            self.record(service, uid, pod_id, epoch, link.revision)
            return link.revision

        # A link of an earlier life: move it to this epoch atomically.
        lease = 0 if self._persistent else self._session.lease_id
        result = self._store.txn(
            [Compare(link_key, "mod", "==", link.revision)],
            [Put(link_key, encode_link(pod_id, epoch), lease)],
            [Get(link_key)],
        )
        if not result.succeeded:
            now = result.read(0)
            owner = None if now is None else link_from_kv(uid, now).pod_id
            raise NotOwnerError(uid, pod_id, owner, result.revision)
        self.record(service, uid, pod_id, epoch, result.revision)
        return result.revision

    # ------------------------------------------------------- internals

    def _service(self, service: str | None) -> str:
        if service is None:
            return self._session.service
        return check_name("service", service)

    def _check_operations(
        self,
        compares: Sequence[Compare],
        success: Sequence[Operation],
        failure: Sequence[Operation],
    ) -> None:
        """Keys must be in this namespace; writes not on library keys."""
        root = self._keyspace.root
        reserved = tuple(
            f"{root}{part}/" for part in ("pods", "load", "links")
        )
        for item in (*compares, *success, *failure):
            if not isinstance(item, (Compare, Put, Get, Delete)):
                raise InvalidArgumentError(
                    "operation", f"{item!r} is not Compare/Put/Get/Delete"
                )
            if not isinstance(item.key, str) or not item.key.startswith(root):
                raise InvalidArgumentError(
                    "key", f"{item.key!r} is outside namespace root {root!r}"
                )
            writes = isinstance(item, (Put, Delete))
            if writes and item.key.startswith(reserved):
                raise InvalidArgumentError(
                    "key", f"{item.key!r} is one of etcdroute's own keys"
                )

    def _on_transition(self, transition: Transition) -> None:
        if transition.new in (SessionState.LOST, SessionState.STOPPED):
            state = transition.new.value
            self._lose_all(f"session {state}: {transition.reason}")

    def _lose_all(self, reason: str) -> None:
        with self._lock:
            lost = list(self._records.values())
        if lost:
            self._lose(lost, reason)

    def _lose(self, lost: Sequence[OwnedLink], reason: str) -> None:
        with self._lock:
            gone = [
                item
                for item in lost
                if self._records.get((item.service, item.uid)) == item
            ]
            for item in gone:
                del self._records[(item.service, item.uid)]
            listeners = list(self._listeners)
        if not gone:
            return
        logger.warning(
            "pod %d no longer owns %d uid(s) (%s)",
            self._session.pod_id,
            len(gone),
            reason,
        )
        self.ownership_lost.set()
        loss = OwnershipLoss(tuple((i.service, i.uid) for i in gone), reason)
        for listener in listeners:
            try:
                listener(loss)
            except Exception:
                logger.exception("ownership listener failed")
