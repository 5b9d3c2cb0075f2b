"""Link operations on etcd: the ``uid -> pod`` table of one namespace.

Every change of a link is one etcd transaction that compares revisions
(never a read followed by an unconditioned write):

* the target pod's registration key is compared on its ``mod_revision``,
  so a link can only be made while the registration read is still the
  current one, in particular still registered and, for ``try_set``,
  accepting (G4);
* a new link is created only if the link key's ``create_revision`` is 0
  (absent), so at most one of any number of racing callers creates it
  (G1, G2); the losers get the owner from the same transaction.

The value of a link records the owner pod and its *epoch* (the revision
at which that pod's current registration was created). A pod process
from an earlier life of the same pod id has a smaller epoch, which is how
:meth:`LinkTable.remove_with_id` refuses to let it remove a newer life's
link.

:class:`LinkTable` is used by the server driver and by client routers; it
holds no state of its own beyond its configuration and is thread-safe.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

from etcdroute.errors import (
    CorruptValueError,
    LeaseLostError,
    PodNotAcceptingError,
    PodNotRegisteredError,
    StoreError,
)
from etcdroute.keys import Keyspace, check_name, check_pod_id, check_uid
from etcdroute.models import (
    Link,
    LinkResult,
    PodInfo,
    decode_link,
    decode_load,
    decode_registration,
    encode_link,
)
from etcdroute.store import (
    Compare,
    Delete,
    EtcdStore,
    Get,
    KeyValue,
    Put,
)

logger = logging.getLogger(__name__)

#: How many times a call re-reads a registration that changed under it
#: (a routing-state change or re-registration) before giving up.
_MAX_ATTEMPTS = 8


class LinkTable:
    """Link and registration reads and writes for one namespace.

    ``persistent`` chooses whether new links outlive their owner's lease.
    """

    def __init__(
        self, store: EtcdStore, keyspace: Keyspace, *, persistent: bool = False
    ) -> None:
        self.store = store
        self.keyspace = keyspace
        self.persistent = persistent
        #: Values under our keys that did not decode and were skipped.
        self.corrupt_skipped = 0
        self._skipped_lock = threading.Lock()

    # ------------------------------------------------------------ pods

    def pod(self, service: str, pod_id: int) -> PodInfo | None:
        """The live registration of a pod, or None (linearizable read)."""
        kv, _ = self.store.get(self.keyspace.pod_key(service, pod_id))
        return None if kv is None else pod_from_kv(service, kv)

    def pods(self, service: str) -> tuple[list[PodInfo], int]:
        """Every registered pod of a service with its load report.

        Returns ``(pods, revision)``. A value that does not decode is
        logged and skipped, never fatal.
        """
        check_name("service", service)
        kvs, revision = self.store.get_prefix(
            self.keyspace.pods_prefix(service)
        )
        loads, _ = self.store.get_prefix(
            self.keyspace.load_prefix(service), revision=revision
        )
        load_by_pod: dict[int, tuple[int, int]] = {}
        for kv in loads:
            try:
                load_by_pod[int(kv.key.rsplit("/", 1)[1])] = decode_load(
                    kv.key, kv.value
                )
            except (CorruptValueError, ValueError) as exc:
                self._skip("load report", exc)
        found = []
        for kv in kvs:
            try:
                info = pod_from_kv(service, kv)
            except CorruptValueError as exc:
                self._skip("registration", exc)
                continue
            load, workload = load_by_pod.get(info.pod_id, (0, 0))
            found.append(replace(info, load=load, workload=workload))
        return found, revision

    # ----------------------------------------------------------- reads

    def get(self, service: str, uid: str) -> Link | None:
        """The link of ``uid``, or None (a linearizable read)."""
        key = self.keyspace.link_key(service, uid)
        kv, _ = self.store.get(key)
        return None if kv is None else link_from_kv(uid, kv)

    def uids_of(self, service: str, pod_id: int) -> list[str]:
        """Every uid of ``service`` linked to ``pod_id``.

        Scans the service's links (paged, one consistent snapshot): cost
        grows with the number of links of the service, so this is an
        admin and reconciliation call, not a hot path.
        """
        links, _ = self.links(service)
        return [link.uid for link in links if link.pod_id == pod_id]

    def links(self, service: str) -> tuple[list[Link], int]:
        """Every link of ``service`` in one snapshot: ``(links, revision)``.

        A key or value that does not decode (planted by someone else) is
        logged at WARNING and skipped, never fatal.
        """
        prefix = self.keyspace.links_prefix(service)
        kvs, revision = self.store.get_prefix(prefix)
        found = []
        for kv in kvs:
            try:
                uid = self.keyspace.uid_from_link_key(service, kv.key)
                found.append(link_from_kv(uid, kv))
            except CorruptValueError as exc:
                self._skip("link", exc)
        return found, revision

    # ---------------------------------------------------------- writes

    def try_set(
        self,
        service: str,
        uid: str,
        pod_id: int,
        *,
        target: PodInfo | None = None,
        epoch: int | None = None,
    ) -> LinkResult:
        """Create ``uid -> pod_id`` unless ``uid`` is linked already.

        One transaction creates the link if it is absent and the target's
        registration is unchanged; if it fails, the same transaction reads
        the current owner. ``target`` is a registration the caller already
        holds (a router's table); it saves one read and is checked anyway.
        ``epoch`` pins the target's incarnation: a pod linking to itself
        passes its own, so a process whose registration was replaced by a
        later life gets :class:`LeaseLostError` instead of a link.
        """
        link_key = self.keyspace.link_key(service, uid)
        pod_key = self.keyspace.pod_key(service, pod_id)
        pod = (
            target if target is not None else self._registered(service, pod_id)
        )

        for _ in range(_MAX_ATTEMPTS):
            # The registration must be accepting as of the revision read;
            # the transaction below checks it is still that revision.
            _check_epoch(pod, epoch)
            if not pod.accepting:
                raise PodNotAcceptingError(
                    service, pod_id, pod.routing_state.value
                )
            result = self.store.txn(
                [
                    Compare(link_key, "create", "==", 0),
                    Compare(pod_key, "mod", "==", pod.revision),
                ],
                success=[
                    Put(
                        link_key,
                        encode_link(pod_id, pod.epoch),
                        self._lease(pod),
                    )
                ],
                failure=[Get(link_key)],
            )
            if result.succeeded:
                return LinkResult(uid, pod_id, True, result.revision)

            # Already linked: the owner read in the same transaction is
            # the answer every racing caller gets.
            current = result.read(0)
            if current is not None:
                link = link_from_kv(uid, current)
                return LinkResult(uid, link.pod_id, False, link.revision)

            # The registration changed (state change or new life): retry
            # against the fresh one, or fail if it is gone. This is rare,
            # so the common conflict above does not pay for reading it.
            pod = self._registered(service, pod_id)
        raise StoreError(
            f"try_set of uid {uid!r}: pod {pod_id} registration kept "
            f"changing; gave up after {_MAX_ATTEMPTS} attempts"
        )

    def set(
        self, service: str, uid: str, pod_id: int, *, epoch: int | None = None
    ) -> LinkResult:
        """Link ``uid`` to ``pod_id`` whatever it was linked to before.

        The target must be registered, in any routing state (this is the
        administrative override). ``created`` is True when no link existed.
        ``epoch`` pins the target's incarnation as in :meth:`try_set`.
        """
        link_key = self.keyspace.link_key(service, uid)
        pod_key = self.keyspace.pod_key(service, pod_id)
        pod = self._registered(service, pod_id)

        for _ in range(_MAX_ATTEMPTS):
            _check_epoch(pod, epoch)
            result = self.store.txn(
                [Compare(pod_key, "mod", "==", pod.revision)],
                success=[
                    Get(link_key),
                    Put(
                        link_key,
                        encode_link(pod_id, pod.epoch),
                        self._lease(pod),
                    ),
                ],
                failure=[Get(pod_key)],
            )
            if result.succeeded:
                existed = result.read(0) is not None
                return LinkResult(uid, pod_id, not existed, result.revision)
            pod = self._registration_or_raise(service, pod_id, result.read(0))
        raise StoreError(
            f"set of uid {uid!r}: pod {pod_id} registration kept changing"
        )

    def remove(self, service: str, uid: str) -> bool:
        """Delete the link of ``uid``; True if one existed."""
        deleted, _ = self.store.delete(self.keyspace.link_key(service, uid))
        return deleted > 0

    def remove_with_id(
        self,
        service: str,
        uid: str,
        pod_id: int,
        *,
        epoch: int | None = None,
    ) -> bool:
        """Delete the link of ``uid`` only if it names ``pod_id``.

        With ``epoch`` (the caller's own incarnation), a link made by a
        *later* life of the same pod id is left alone: a stale process can
        never remove it. Links of the same or an earlier life are removed.
        Returns True if this call deleted the link.
        """
        link_key = self.keyspace.link_key(service, uid)

        # Fast path for the caller's own link: compare the exact value.
        if epoch is not None:
            result = self.store.txn(
                [Compare(link_key, "value", "==", encode_link(pod_id, epoch))],
                success=[Delete(link_key)],
                failure=[Get(link_key)],
            )
            if result.succeeded:
                return True
            current = result.read(0)
        else:
            current, _ = self.store.get(link_key)

        # General path: compare-and-delete on the revision that was read.
        for _ in range(_MAX_ATTEMPTS):
            if current is None:
                return False
            link = link_from_kv(uid, current)
            if link.pod_id != pod_id:
                return False
            if epoch is not None and link.epoch > epoch:
                logger.debug(
                    "not removing %r: linked by a later life of pod %d",
                    uid,
                    pod_id,
                )
                return False
            result = self.store.txn(
                [Compare(link_key, "mod", "==", current.mod_revision)],
                success=[Delete(link_key)],
                failure=[Get(link_key)],
            )
            if result.succeeded:
                return True
            current = result.read(0)
        raise StoreError(f"remove of uid {uid!r}: link kept changing")

    # -------------------------------------------------------- helpers

    def _skip(self, what: str, exc: Exception) -> None:
        """Log and count a value that does not decode (never fatal)."""
        with self._skipped_lock:
            self.corrupt_skipped += 1
        logger.warning("skipping corrupt %s: %s", what, exc)

    def _lease(self, pod: PodInfo) -> int:
        return 0 if self.persistent else pod.lease

    def _registered(self, service: str, pod_id: int) -> PodInfo:
        kv, _ = self.store.get(self.keyspace.pod_key(service, pod_id))
        return self._registration_or_raise(service, pod_id, kv)

    @staticmethod
    def _registration_or_raise(
        service: str, pod_id: int, kv: KeyValue | None
    ) -> PodInfo:
        if kv is None:
            raise PodNotRegisteredError(service, pod_id)
        return pod_from_kv(service, kv)


def _check_epoch(pod: PodInfo, epoch: int | None) -> None:
    """Refuse to link to a later (or earlier) life of the expected pod."""
    if epoch is not None and pod.epoch != epoch:
        raise LeaseLostError(
            pod.service,
            pod.pod_id,
            detail=f"registered by epoch {pod.epoch}, not {epoch}",
        )


def pod_from_kv(service: str, kv: KeyValue) -> PodInfo:
    """Decode a registration key (raises :class:`CorruptValueError`)."""
    pod_id, address, state = decode_registration(kv.key, kv.value)
    if not kv.key.endswith(f"/{pod_id:010d}"):
        raise CorruptValueError(kv.key, f"names pod {pod_id}, not its key")
    return PodInfo(
        service=service,
        pod_id=pod_id,
        address=address,
        routing_state=state,
        epoch=kv.create_revision,
        lease=kv.lease,
        revision=kv.mod_revision,
    )


def link_from_kv(uid: str, kv: KeyValue) -> Link:
    """Decode a link key (raises :class:`CorruptValueError`)."""
    pod_id, epoch = decode_link(kv.key, kv.value)
    return Link(
        uid=uid,
        pod_id=pod_id,
        epoch=epoch,
        revision=kv.mod_revision,
        create_revision=kv.create_revision,
        lease=kv.lease,
    )


def check_link_args(uid: object, pod_id: object | None = None) -> None:
    """Validate the common arguments of a link call before any I/O."""
    check_uid(uid)
    if pod_id is not None:
        check_pod_id(pod_id)
