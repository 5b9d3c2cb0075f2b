"""The router's bounded cache of links, kept coherent by a watch.

Entries map a uid to ``(pod_id, revision)`` where ``revision`` is the
link's ``mod_revision``: a fencing token that only grows for a uid. The
cache is a ``cachetools.LRUCache`` of at most ``maxsize`` entries.

Three things change it, all under one lock and all by the same rule,
*an entry only ever moves to a newer revision*:

* the mirror's writer thread applies watch events in revision order (a
  put replaces an older entry, a delete removes an older one; puts of
  unknown uids are added only while the cache has room, so that churn
  elsewhere never evicts the uids this router serves);
* a router that read a link from etcd *offers* it, with the revision the
  read reflects;
* a pod's correction is offered the same way.

An offer for a uid the cache does not hold is only safe if no watch
event for that uid arrived after the offer's revision: such an event was
applied while the uid was absent and left no trace. A bounded log of the
last event revision per uid (``log_size`` uids) answers that question;
when the log cannot (it was trimmed past the offer's revision) the
offer is refused. Refusing is always safe: the next lookup reads etcd.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import NamedTuple

from cachetools import LRUCache

from etcdroute.errors import CorruptValueError
from etcdroute.keys import Keyspace, check_uid
from etcdroute.models import decode_link
from etcdroute.store import EtcdStore, KeyValue, WatchEvent

logger = logging.getLogger(__name__)


class CachedLink(NamedTuple):
    """A cached link: the owner pod and the link's revision."""

    pod_id: int
    revision: int


class LinkCache:
    """Links of one service, bounded, coherent with etcd. Thread-safe."""

    def __init__(
        self,
        keyspace: Keyspace,
        service: str,
        *,
        maxsize: int,
        log_size: int = 65536,
    ) -> None:
        self._keyspace = keyspace
        self._service = service
        self._prefix_len = len(keyspace.links_prefix(service))
        self.maxsize = maxsize
        self._log_size = log_size
        self._lock = threading.Lock()
        self._cache: LRUCache[str, CachedLink] = LRUCache(maxsize)
        self._revision = 0
        self._log: OrderedDict[str, int] = OrderedDict()
        self._log_floor = 0

    # ------------------------------------------------------------ reads

    def get(self, uid: str) -> tuple[CachedLink | None, int]:
        """``(entry or None, revision the cache reflects)``."""
        with self._lock:
            return self._cache.get(uid), self._revision

    @property
    def revision(self) -> int:
        with self._lock:
            return self._revision

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def snapshot(self) -> dict[str, CachedLink]:
        """A copy of every entry (for checks and tools)."""
        with self._lock:
            return dict(self._cache.items())

    # ----------------------------------------------------------- offers

    def offer(self, uid: str, pod_id: int, revision: int, as_of: int) -> bool:
        """Add or update ``uid`` if this is newer than what is known.

        ``revision`` is the link's revision, ``as_of`` a store revision at
        which the link was known to be current (``as_of >= revision``).
        Returns True if the cache took it. ``uid`` must be valid.
        """
        with self._lock:
            entry = self._cache.get(uid)
            if entry is not None:
                if revision <= entry.revision:
                    return False
            elif as_of <= self._revision and not self._quiet_since(uid, as_of):
                return False
            self._cache[uid] = CachedLink(pod_id, revision)
            return True

    def _quiet_since(self, uid: str, as_of: int) -> bool:
        """True if no event for ``uid`` was applied after ``as_of``."""
        if self._log_floor > as_of:
            return False  # the log no longer reaches back that far
        return self._log.get(uid, 0) <= as_of

    # ------------------------------------------------------- mirror sink

    def reset_from(self, store: EtcdStore, prefix: str, revision: int) -> None:
        """Start over as of ``revision``: prefill if the links fit."""
        count, _ = store.count_prefix(prefix)
        fresh: LRUCache[str, CachedLink] = LRUCache(self.maxsize)
        if count <= self.maxsize:
            kvs, _ = store.get_prefix(prefix, revision=revision)
            for kv in kvs:
                decoded = self._decode(kv)
                if decoded is not None:
                    fresh[decoded[0]] = decoded[1]
        else:
            logger.info(
                "%d links exceed the cache size %d: starting cold",
                count,
                self.maxsize,
            )
        with self._lock:
            self._cache = fresh
            self._revision = revision
            self._log.clear()
            self._log_floor = revision

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        """Apply watch events in order; newer revisions only."""
        decoded = [(self._uid(event.kv.key), event) for event in events]
        with self._lock:
            for uid, event in decoded:
                if uid is not None:
                    self._apply_one(uid, event)
            self._revision = max(self._revision, revision)

    def _apply_one(self, uid: str, event: WatchEvent) -> None:
        revision = event.kv.mod_revision
        self._log[uid] = revision
        self._log.move_to_end(uid)
        if len(self._log) > self._log_size:
            _, trimmed = self._log.popitem(last=False)
            self._log_floor = max(self._log_floor, trimmed)

        entry = self._cache.get(uid)
        if entry is not None and entry.revision >= revision:
            return
        if event.deleted:
            if entry is not None:
                del self._cache[uid]
            return
        if entry is None and self._cache.currsize >= self.maxsize:
            return  # keep the uids this router serves
        decoded = self._decode(event.kv)
        if decoded is not None:
            self._cache[uid] = decoded[1]
        elif entry is not None:
            del self._cache[uid]

    # ---------------------------------------------------------- helpers

    def _uid(self, key: str) -> str | None:
        # Only valid uids enter the cache: the router serves hits without
        # validating them again.
        try:
            return check_uid(
                self._keyspace.uid_from_link_key(self._service, key)
            )
        except ValueError:
            logger.warning("link cache skips key %r: not a valid uid", key)
            return None

    def _decode(self, kv: KeyValue) -> tuple[str, CachedLink] | None:
        uid = self._uid(kv.key)
        if uid is None:
            return None
        try:
            pod_id, _ = decode_link(kv.key, kv.value)
        except CorruptValueError as exc:
            logger.warning("link cache skips a link: %s", exc)
            return None
        return uid, CachedLink(pod_id, kv.mod_revision)
